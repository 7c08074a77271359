// What every browser test shares: Debian's chromium, headless (its background networking off:
// this machine's network is closed), one page, a verdict and an exit code for tests/*.rs.
import { chromium } from 'playwright-core';

// Run `test(page)` in a fresh browser; exit 1 with the reason if it throws.
export async function run(viewport, test) {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  let failed = false;
  try {
    await test(await browser.newPage({ viewport }));
  } catch (e) {
    failed = true;
    console.error('BROWSER TEST FAILED:', e.message);
  } finally {
    await browser.close();
  }
  process.exit(failed ? 1 : 0);
}

// Log in on the dashboard at `url` and wait until it says so.
export async function logIn(page, url, password) {
  await page.goto(url);
  await page.fill('#password', password);
  await page.click('#login button');
  await page.waitForSelector('#logout:not([hidden])');
}

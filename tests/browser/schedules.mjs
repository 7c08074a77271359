// Browser test of the dashboard's schedules: log in, see the group's phase and next change,
// skip that change and un-skip it. Usage: node schedules.mjs URL PASSWORD GROUP
// (run inside the lab namespace by tests/e2e.rs).
import { chromium } from 'playwright-core';

const [url, password, group] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  await page.goto(url);
  await page.fill('#password', password);
  await page.click('#login button');
  await page.waitForSelector('#logout:not([hidden])');
  const row = page.locator(`#sched-table tr[data-group="${group}"]`);
  await row.waitFor({ timeout: 20_000 });
  const before = await row.textContent();
  if (!before.includes('released') || !before.includes('enlisted ')) {
    throw new Error('expected "released" now and an "enlisted" next change: ' + before);
  }
  await row.locator('button', { hasText: /^skip$/ }).click();
  await page.locator(`#sched-table tr[data-group="${group}"]`, { hasText: '(skipped)' }).waitFor({ timeout: 20_000 });
  await row.locator('button', { hasText: /^unskip$/ }).click();
  await page.locator(`#sched-table tr[data-group="${group}"] button`, { hasText: /^skip$/ }).waitFor({ timeout: 20_000 });
  const after = await row.textContent();
  if (after.includes('(skipped)')) throw new Error('still skipped: ' + after);
  console.log('schedule row:', after);
} catch (e) {
  failed = true;
  console.error('BROWSER TEST FAILED:', e.message);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);

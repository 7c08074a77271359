// Browser test of the dashboard: log in, watch a PC join live, release it, see it leave.
// Usage: node dashboard.mjs URL PASSWORD MAC   (run inside the lab namespace by tests/e2e.rs)
import { run } from './run.mjs';

const [url, password, mac] = process.argv.slice(2);
const rowId = '#node-' + mac.replaceAll(':', '');
const log = (...a) => console.log(new Date().toISOString(), ...a);

await run({ width: 390, height: 844 }, async (page) => { // phone-sized
  let loads = 0;
  page.on('load', () => loads++);
  await page.goto(url);
  // Not logged in: no node table content, a login form.
  await page.waitForSelector('#login:not([hidden])');
  await page.fill('#password', 'wrong password');
  await page.click('#login button');
  // (Locators, not waitForFunction: the dashboard's CSP forbids eval, rightly.)
  await page.locator('#message', { hasText: 'Login failed' }).waitFor();
  await page.fill('#password', password);
  await page.click('#login button');
  await page.waitForSelector('#logout:not([hidden])');
  // The enrollment window: opened for 15 minutes with one click, shown, closed again.
  await page.click('#enroll-open');
  await page.locator('#enroll-state', { hasText: 'New PCs join for 15 min more' }).waitFor();
  await page.click('#enroll-close');
  await page.locator('#enroll-state', { hasText: 'New PCs: open' }).waitFor();
  log('logged in; waiting for', mac, 'to join (live, no reload)');

  await page.waitForSelector(`${rowId} .state.s-healthy`, { timeout: 300_000 });
  const joinedAt = Date.now();
  const row = await page.textContent(rowId);
  log('joined:', row);
  if (loads !== 1) throw new Error(`page was loaded ${loads} times; updates must arrive live`);
  if (!row.includes('Pentium II')) throw new Error('row shows no CPU model: ' + row);
  const up = await page.textContent('#c-up');
  if (up.trim() !== '1') throw new Error('counter "up" shows ' + up);

  // Its boot drawn: a bar in the storm chart, and on its page each step with its duration.
  const bar = `#storm-chart .bootrow[data-mac="${mac}"]`;
  for (const step of ['dhcp', 'script', 'kernel', 'initrd', 'registered']) {
    const n = await page.locator(`${bar} .seg[data-step="${step}"]`).count();
    if (n < 1) throw new Error(`storm chart: no ${step} segment: ` + await page.textContent('#storm'));
  }
  await page.click(`${rowId} td.name a`);
  await page.waitForSelector('#detail:not([hidden]) #d-boot .bootbar');
  const steps = await page.textContent('#d-boot table.steps');
  log('boot steps:', steps);
  if (!/kernel/.test(steps) || !/registered/.test(steps)) throw new Error('node page: boot steps ' + steps);
  await page.click('#detail a[href="#"]');
  await page.waitForSelector('#list:not([hidden])');

  let asked = '';
  page.once('dialog', (d) => { asked = d.message(); d.accept(); });
  await page.click(`${rowId} button[data-action="release"]`);
  if (!asked.startsWith('Release ')) throw new Error('no confirmation before a release: ' + asked);
  log('release clicked');
  await page.waitForSelector(`${rowId} .state.s-leaving, ${rowId} .state.s-gone`, { timeout: 60_000 });
  log('leaving after', (Date.now() - joinedAt) / 1000, 's');
  await page.waitForSelector(`${rowId} .state.s-gone`, { timeout: 300_000 });
  log('gone; events:', (await page.textContent('#events')).slice(0, 300));
  if (loads !== 1) throw new Error('page reloaded');
});

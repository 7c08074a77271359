// Browser test of the dashboard's schedules: log in, see the group's phase and next change,
// skip that change and un-skip it; see what the group lent. Usage: node schedules.mjs URL PASSWORD GROUP
// (run inside the lab namespace by tests/jobs.rs).
import { logIn, run } from './run.mjs';

const [url, password, group] = process.argv.slice(2);
await run({ width: 1200, height: 900 }, async (page) => {
  await logIn(page, url, password);
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
  // What the group lent: its nodes were enlisted for a while (h:mm), none woken yet.
  const lent = page.locator(`#lent-table tr[data-group="${group}"]`);
  await lent.waitFor({ timeout: 20_000 });
  const cells = await lent.locator('td').allTextContents();
  if (cells[1] !== '3' || !/^\d+:\d\d$/.test(cells[2])) {
    throw new Error('expected 3 nodes and h:mm enlisted: ' + cells.join(' | '));
  }
  console.log('lent row:', cells.join(' | '));
});

// Browser test of the dashboard's schedules: log in, see the group's phase and next change,
// skip that change and un-skip it. Usage: node schedules.mjs URL PASSWORD GROUP
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
});

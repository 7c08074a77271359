// Browser test of running a command from the dashboard: log in, tick a room's two nodes at
// once, run a command (confirmed: it runs as root), see one folded answer for both.
// Usage: node exec.mjs URL PASSWORD GROUP NAME1 NAME2 (run inside the lab namespace by
// tests/exec.rs).
import { logIn, run } from './run.mjs';

const [url, password, room, ...names] = process.argv.slice(2);
await run({ width: 1200, height: 900 }, async (page) => {
  await logIn(page, url, password);
  await page.waitForSelector('#exec-form:not([hidden])');
  await page.selectOption('#tick-group', room);
  for (const n of names) {
    if (!(await page.isChecked(`input.sel[aria-label="select ${n}"]`))) throw new Error(`${n} not ticked by its room`);
  }
  await page.fill('#exec-cmd', 'echo from-the-dashboard');
  // Asked first, naming the nodes: declined, nothing runs; accepted, it runs.
  let asked = '';
  page.once('dialog', (d) => { asked = d.message(); d.dismiss(); });
  await page.click('#exec-form button');
  await page.waitForTimeout(500);
  if (!asked.includes('as root on 2 node(s)') || !names.every((n) => asked.includes(n))) throw new Error('confirmation: ' + asked);
  if (await page.locator('.exec-group').count()) throw new Error('ran though declined');
  page.once('dialog', (d) => d.accept());
  await page.click('#exec-form button');
  // Both nodes' answers arrive, then fold into one group (before that: "running").
  const group = page.locator('.exec-group', { hasText: 'from-the-dashboard' }).filter({ hasText: '(2)' });
  await group.waitFor({ timeout: 60_000 });
  const text = await group.textContent();
  for (const n of names) if (!text.includes(n)) throw new Error(`${n} missing from ${text}`);
  if (!text.includes('(2)')) throw new Error('not folded: ' + text);
  if (!text.includes('from-the-dashboard')) throw new Error('no output: ' + text);
  console.log('folded answer:', text);
});

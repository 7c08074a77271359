// Browser test of running a command from the dashboard: log in, tick two nodes, run a command,
// see one folded answer for both. Usage: node exec.mjs URL PASSWORD NAME1 NAME2
// (run inside the lab namespace by tests/exec.rs).
import { logIn, run } from './run.mjs';

const [url, password, ...names] = process.argv.slice(2);
await run({ width: 1200, height: 900 }, async (page) => {
  await logIn(page, url, password);
  await page.waitForSelector('#exec-form:not([hidden])');
  for (const n of names) await page.check(`input.sel[aria-label="select ${n}"]`);
  await page.fill('#exec-cmd', 'echo from-the-dashboard');
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

// Browser test of a PC that cannot join: its row says it is stuck, and why (its card has no
// driver in its image, and what the head last saw of its boot); so does its page.
// Usage: node stuck.mjs URL PASSWORD MAC CARD   (run inside the lab namespace by tests/e2e.rs)
import { logIn, run } from './run.mjs';

const [url, password, mac, card] = process.argv.slice(2);
const rowId = '#node-' + mac.replaceAll(':', '');
await run({ width: 1200, height: 900 }, async (page) => {
  await logIn(page, url, password);
  await page.waitForSelector(`${rowId} .state.s-stuck`, { timeout: 120_000 });
  const problem = await page.textContent(`${rowId} .problem`);
  console.log('row problem:', problem);
  for (const want of [`network card PCI ${card}: no driver for it in image i586`, 'never registered; last seen: ']) {
    if (!problem.includes(want)) throw new Error(`row: no "${want}" in: ${problem}`);
  }
  await page.click(`${rowId} td.name a`);
  await page.waitForSelector('#detail:not([hidden])');
  const facts = await page.textContent('#d-facts');
  if (!facts.includes('stuck: network card PCI ' + card)) throw new Error('node page: ' + facts);
  console.log('node page says why');
});

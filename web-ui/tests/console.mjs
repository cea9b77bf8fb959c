// The console in headless Chromium against a real daemon: first-run setup, login, the dashboard
// fed by server-sent events, a bad prefix shown beside its field, a static route added (the
// Rust side then checks traffic flows), a commit-confirm left unconfirmed that rolls back, a
// candidate staged with its diff, a bad one refused beside the editor, and a backup restored.
// Screenshots of each page go to $ARTIFACTS. Run by control/tests/console.rs inside the
// router's network namespace.
import { writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const { BASE, SETUP_TOKEN, ARTIFACTS, GATEWAY, SERVICE, TRIAL, RESTORED, PLUGIN_WASM, PLUGIN_MANIFEST } = process.env;
const step = (s) => console.log(`console: ${s}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  const shot = (name) => page.screenshot({ path: `${ARTIFACTS}/${name}.png`, fullPage: true });
  const offsite = [];
  page.on('request', (r) => { if (!r.url().startsWith(BASE)) offsite.push(r.url()); });

  step('first-run setup');
  await page.goto(BASE);
  await page.waitForSelector('form[aria-label="First-run setup"]');
  await shot('setup');
  await page.fill('input[name=token]', SETUP_TOKEN);
  await page.fill('input[name=username]', 'admin');
  await page.fill('input[name=password]', 'correct horse battery');
  await page.press('input[name=password]', 'Enter');

  step('login');
  await page.waitForSelector('form[aria-label="Log in"]');
  await shot('login');
  await page.fill('input[name=username]', 'admin');
  await page.fill('input[name=password]', 'wrong password!!');
  await page.click('button[type=submit]');
  await page.waitForSelector('#banner:not([hidden])');
  await page.fill('input[name=password]', 'correct horse battery');
  await page.click('button[type=submit]');

  step('dashboard');
  await page.waitForSelector('h1:text("Dashboard")');
  await page.waitForSelector('section.card', { timeout: 15000 });
  await shot('dashboard');

  step('a bad prefix');
  await page.click('nav a[href="#/routes"]');
  await page.waitForSelector('form[aria-label="Add a static route"]');
  await page.fill('input[name=prefix]', '10.99.0.1/24');
  await page.fill('input[name=via]', GATEWAY);
  await page.click('form[aria-label="Add a static route"] button[type=submit]');
  const err = page.locator('.field-error[data-field="prefix"]');
  await err.filter({ hasText: 'host bits' }).waitFor();
  await shot('routes-bad-prefix');

  step('a static route');
  await page.fill('input[name=prefix]', SERVICE);
  await page.click('form[aria-label="Add a static route"] button[type=submit]');
  await page.locator('table[aria-label="Static routes"]').getByRole('cell', { name: SERVICE, exact: true }).waitFor();
  await shot('routes');

  step('commit-confirm left unconfirmed');
  await page.fill('input[name=prefix]', TRIAL);
  await page.fill('input[name=via]', GATEWAY);
  await page.fill('input[name=confirm_seconds]', '10');
  await page.click('form[aria-label="Add a static route"] button[type=submit]');
  await page.locator('table[aria-label="Static routes"]').getByRole('cell', { name: TRIAL, exact: true }).waitFor();
  await page.click('nav a[href="#/config"]');
  await page.waitForSelector('#countdown');
  await shot('config-countdown');
  // The page reloads itself when the countdown ends; the rollback is the daemon's.
  await page.waitForSelector('#countdown', { state: 'detached', timeout: 30000 });
  await page.click('nav a[href="#/routes"]');
  await page.waitForSelector('table[aria-label="Static routes"]');
  const trialLeft = await page.locator('table[aria-label="Static routes"]').getByRole('cell', { name: TRIAL, exact: true }).count();
  if (trialLeft !== 0) throw new Error(`${TRIAL} is still configured after its deadline`);
  await page.click('nav a[href="#/config"]');
  await page.waitForSelector('table[aria-label="History"]');
  await shot('config');

  step('a plugin uploaded');
  await page.click('nav a[href="#/plugins"]');
  await page.waitForSelector('form[aria-label="Add a plugin"]');
  await page.setInputFiles('input[name=wasm]', PLUGIN_WASM);
  await page.setInputFiles('input[name=manifest]', PLUGIN_MANIFEST);
  await page.fill('textarea[name=config]', '{"max_pps": 300, "sample_every": 1, "block_ms": 3000}');
  await page.click('form[aria-label="Add a plugin"] button[type=submit]');
  await page.locator('table[aria-label="Plugins"]').getByRole('cell', { name: 'running', exact: true }).waitFor();
  await shot('plugins');

  for (const [view, name] of [['#/interfaces', 'interfaces'], ['#/users', 'users'], ['#/audit', 'audit']]) {
    step(`the ${name} page`);
    await page.click(`nav a[href="${view}"]`);
    await page.waitForSelector('main table');
    await shot(name);
  }

  step('ping from the router');
  await page.click('nav a[href="#/diagnostics"]');
  await page.fill('input[name=target]', GATEWAY);
  await page.click('form[aria-label="Diagnostics"] button[value=ping]');
  await page.locator('#diagnostic-output').filter({ hasText: 'bytes from' }).waitFor({ timeout: 15000 });
  await shot('diagnostics');

  step('a staged candidate and its diff');
  await page.click('nav a[href="#/config"]');
  const editor = page.locator('form[aria-label="Candidate"] textarea[name=config]');
  await editor.waitFor();
  const current = JSON.parse(await editor.inputValue());
  const withRoute = (prefix) => ({ ...current, routes: [...(current.routes || []), { prefix, via: GATEWAY }] });
  await editor.fill(JSON.stringify(withRoute(RESTORED), null, 2));
  await page.click('form[aria-label="Candidate"] button[value=stage]');
  await page.locator('#diff li.diff-added').filter({ hasText: RESTORED }).waitFor();
  await shot('config-diff');
  await page.click('form[aria-label="Candidate"] button[value=discard]');
  await page.locator('p#diff').waitFor();

  step('a bad candidate');
  await editor.fill(JSON.stringify(withRoute(RESTORED.replace('.0/', '.1/')), null, 2));
  await page.click('form[aria-label="Candidate"] button[value=stage]');
  await page.locator('form[aria-label="Candidate"] .field-error[data-field=config]').filter({ hasText: 'prefix' }).waitFor();
  await shot('config-bad-candidate');

  step('a backup restored');
  const backup = `${ARTIFACTS}/backup.json`;
  writeFileSync(backup, JSON.stringify(withRoute(RESTORED), null, 2));
  await page.setInputFiles('form[aria-label="Restore"] input[name=backup]', backup);
  await page.click('form[aria-label="Restore"] button[type=submit]');
  await page.locator('#banner').filter({ hasText: 'Restored backup.json as revision' }).waitFor();
  await page.locator('table[aria-label="History"]').getByText('restore of backup.json').waitFor();
  await shot('config-restored');

  if (offsite.length) throw new Error(`requests left the router: ${offsite.join(', ')}`);
  step('done');
} finally {
  await browser.close();
}

// The console in headless Chromium against a real daemon: first-run setup, login, the dashboard
// fed by server-sent events with its top talkers, a bad prefix shown beside its field, a static
// route added (the Rust side then checks traffic flows), a commit-confirm left unconfirmed that
// rolls back, a candidate staged with its diff and discarded, a bad one refused beside the
// editor and a good one committed, a backup downloaded and restored after a rollback (a bad file
// refused first), and the Routing page (a BGP neighbour BIRD refuses, then one added, disabled and
// removed).
// Screenshots of each page go to $ARTIFACTS. Run by control/tests/console.rs inside the
// router's network namespace.
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const { BASE, SETUP_TOKEN, ARTIFACTS, GATEWAY, CLIENT, SERVICE, TRIAL, RESTORED, SPARE, PLUGIN_WASM, PLUGIN_MANIFEST } = process.env;
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
  page.on('pageerror', (e) => console.log(`console: the page failed: ${e.message}`));

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
  await page.locator('table[aria-label="Top talkers"]').getByRole('cell', { name: CLIENT, exact: true })
    .waitFor({ timeout: 10000 });
  await page.locator('#talkers-note').filter({ hasText: 'Over the last' }).waitFor();
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
  // The dataplane's table, searched on the router: the route is there, its origin static.
  const dataplane = page.locator('table[aria-label="The dataplane\'s routes"]');
  for (let i = 0; i < 20; i += 1) {
    await page.fill('input[name=filter]', SERVICE);
    await page.waitForTimeout(500);
    if (await dataplane.getByRole('cell', { name: SERVICE, exact: true }).count()) break;
  }
  await dataplane.locator('tr', { hasText: SERVICE }).getByRole('cell', { name: 'static', exact: true }).waitFor();
  await page.locator('#route-count').filter({ hasText: /^1 of \d+ routes/ }).waitFor();
  await page.locator('#lookup-tables').filter({ hasText: /^Lookup tables: IPv4 \d+\.\d MiB \(\d+ of 16384 groups/ }).waitFor();
  await page.fill('input[name=filter]', '');
  await dataplane.getByRole('cell', { name: 'kernel', exact: true }).first().waitFor();
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

  step('a port attached and detached');
  await page.click('nav a[href="#/interfaces"]');
  const row = page.locator(`tr[data-name="${SPARE}"]`);
  await row.locator('select').selectOption('native');
  await row.getByRole('button', { name: `Attach ${SPARE}` }).click();
  await row.locator('td.xdp-mode').filter({ hasText: 'native' }).waitFor({ timeout: 15000 });
  await shot('interfaces-attached');
  await row.getByRole('button', { name: `Detach ${SPARE}` }).click();
  await row.locator('td.xdp-mode').filter({ hasText: 'not served' }).waitFor({ timeout: 15000 });

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

  step('a bad candidate, then a good one committed');
  const candidate = 'form[aria-label="Candidate"]';
  await editor.fill(JSON.stringify(withRoute(RESTORED.replace('.0/', '.1/')), null, 2));
  await page.click(`${candidate} button[value=commit]`);
  await page.locator(`${candidate} .field-error[data-field=config]`).filter({ hasText: 'prefix' }).waitFor();
  await shot('config-bad-candidate');
  await editor.fill(JSON.stringify(withRoute(RESTORED), null, 2));
  await page.click(`${candidate} button[value=commit]`);
  const committed = page.locator('#banner').filter({ hasText: /Revision \d+ committed\./ });
  await committed.waitFor();
  const revision = Number((await committed.textContent()).match(/Revision (\d+)/)[1]);

  step('a backup downloaded, the change rolled back, the backup restored');
  const backup = `${ARTIFACTS}/sluice-config.json`;
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('a[download]')]);
  await download.saveAs(backup);
  if (!JSON.parse(readFileSync(backup, 'utf8')).routes.some((r) => r.prefix === RESTORED)) {
    throw new Error(`the downloaded backup lacks ${RESTORED}`);
  }
  await page.getByRole('button', { name: `Roll back to ${revision - 1}`, exact: true }).click();
  await page.locator('#banner').filter({ hasText: `Rolled back to revision ${revision - 1}` }).waitFor();
  // The page is drawn again after the banner: the new history has a button for the revision left.
  await page.getByRole('button', { name: `Roll back to ${revision}`, exact: true }).waitFor();
  const restore = 'form[aria-label="Restore"]';
  const invalid = { routes: [{ prefix: RESTORED.replace('.0/', '.1/'), via: GATEWAY }] };
  await page.setInputFiles(`${restore} input[name=backup]`,
    { name: 'invalid.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(invalid)) });
  await page.click(`${restore} button[type=submit]`);
  await page.locator(`${restore} .field-error[data-field=backup]`).filter({ hasText: 'routes[0].prefix' }).waitFor();
  await page.setInputFiles(`${restore} input[name=backup]`, backup);
  await page.click(`${restore} button[type=submit]`);
  await page.locator('#banner').filter({ hasText: 'Restored sluice-config.json as revision' }).waitFor();
  await page.locator('table[aria-label="History"]').getByText('restore of sluice-config.json').waitFor();
  await shot('config-restored');

  step('the routing page: a name BIRD refuses, a neighbour added, disabled and removed');
  await page.click('nav a[href="#/routing"]');
  const bgp = 'form[aria-label="BGP neighbour"]';
  await page.waitForSelector(bgp);
  await page.fill(`${bgp} input[name=name]`, 'filter');
  await page.fill(`${bgp} input[name=neighbor]`, GATEWAY);
  await page.fill(`${bgp} input[name=remote_as]`, '65001');
  await page.fill(`${bgp} input[name=local_as]`, '65000');
  await page.click(`${bgp} button[type=submit]`);
  await page.locator('#banner.error').filter({ hasText: 'BIRD' }).waitFor();
  await page.fill(`${bgp} input[name=name]`, 'upstream1');
  await page.click(`${bgp} button[type=submit]`);
  await page.locator('#banner').filter({ hasText: 'Neighbour upstream1 saved' }).waitFor();
  const neighbour = () => page.locator('tr[data-name="upstream1"]');
  await neighbour().locator('td.state').filter({ hasText: /^(start|up)$/ }).waitFor({ timeout: 15000 });
  await shot('routing');
  await neighbour().getByRole('button', { name: 'Disable upstream1' }).click();
  await neighbour().getByRole('button', { name: 'Enable upstream1' }).waitFor();
  await neighbour().locator('td.state').filter({ hasText: 'down' }).waitFor({ timeout: 15000 });
  await neighbour().getByRole('button', { name: 'Remove upstream1' }).click();
  await neighbour().waitFor({ state: 'detached' });

  if (offsite.length) throw new Error(`requests left the router: ${offsite.join(', ')}`);
  step('done');
} finally {
  await browser.close();
}

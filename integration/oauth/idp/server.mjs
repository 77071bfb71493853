// Test-only OAuth 2.0 authorization server for Postern's XOAUTH2 integration tests.
//
// It wraps oidc-provider (a certified OpenID Provider) and listens on loopback only.
//
// Flow:
//  1. Read the JSON config named by --config (or IDP_CONFIG); environment variables override single
//     values (PORT, ACCESS_TTL, REFRESH_TTL).
//  2. Listen on 127.0.0.1:PORT (0 picks a free port) so the issuer URL can carry the real port.
//  3. Build the provider: static clients, static accounts, authorization code + PKCE S256 (required)
//     and refresh_token grants, refresh-token rotation (a replayed refresh token revokes its grant),
//     revocation and introspection, one resource server (the SMTP scope) with opaque access tokens
//     that a mail server validates through the introspection endpoint.
//  4. Serve the sign-in and consent pages (plain HTML forms, no external resources) and, when
//     enabled, the test-only admin routes POST /test/revoke?account=... and
//     POST /test/drop-access-token (form field token).
//  5. Print one JSON line with the issuer and endpoint URLs on stdout once ready; log to stderr.
//
// Nothing is stored on disk: all grants, sessions and tokens live in memory and die with the process.

import { randomBytes, generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const log = (msg, fields = {}) => {
  process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), msg, ...fields })}\n`);
};

// ---------------------------------------------------------------------------------------------
// 1. Configuration

const { values: flags } = parseArgs({
  options: {
    config: { type: 'string' },
    port: { type: 'string' },
  },
});

const configPath = flags.config ?? process.env.IDP_CONFIG;
if (!configPath) {
  log('missing --config (or IDP_CONFIG)');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));

const intFrom = (name, ...candidates) => {
  for (const c of candidates) {
    if (c === undefined || c === null || c === '') continue;
    const n = Number(c);
    if (!Number.isInteger(n) || n < 0) {
      log('invalid integer setting', { name, value: String(c) });
      process.exit(2);
    }
    return n;
  }
  return undefined;
};

const settings = {
  host: config.host ?? '127.0.0.1',
  port: intFrom('port', flags.port, process.env.PORT, config.port, 0),
  accessTTL: intFrom('accessTTL', process.env.ACCESS_TTL, config.accessTTL, 300),
  refreshTTL: intFrom('refreshTTL', process.env.REFRESH_TTL, config.refreshTTL, 14 * 24 * 3600),
  resource: config.resource ?? 'urn:postern:test:smtp',
  resourceScopes: config.resourceScopes ?? ['smtp'],
  opaqueTokenBits: intFrom('opaqueTokenBits', config.opaqueTokenBits, 256),
  testRoutes: config.testRoutes !== false,
  clients: config.clients ?? [],
  accounts: config.accounts ?? [],
};

if (!/^127\.\d+\.\d+\.\d+$|^::1$|^localhost$/.test(settings.host)) {
  log('refusing to listen on a non-loopback address', { host: settings.host });
  process.exit(2);
}

const accounts = new Map();
for (const a of settings.accounts) {
  if (!a.login || typeof a.password !== 'string') {
    log('account needs login and password');
    process.exit(2);
  }
  accounts.set(a.login, {
    login: a.login,
    password: a.password,
    email: a.email ?? a.login,
    name: a.name ?? a.login.split('@')[0],
  });
}

const clients = settings.clients.map((c) => {
  if (!c.client_id) {
    log('client needs client_id');
    process.exit(2);
  }
  const introspectionOnly = c.introspection_only === true;
  const out = {
    client_id: c.client_id,
    client_secret: c.client_secret,
    token_endpoint_auth_method: c.client_secret ? (c.token_endpoint_auth_method ?? 'client_secret_basic') : 'none',
    redirect_uris: c.redirect_uris ?? [],
    grant_types: introspectionOnly ? [] : ['authorization_code', 'refresh_token'],
    response_types: introspectionOnly ? [] : ['code'],
  };
  if (!out.client_secret) delete out.client_secret;
  return out;
});

const introspectors = new Set(settings.clients.filter((c) => c.introspection_only === true).map((c) => c.client_id));

// ---------------------------------------------------------------------------------------------
// In-memory adapter that can also find everything belonging to one account (for /test/revoke).

class Store {
  constructor() {
    this.items = new Map(); // "Model:id" -> { payload, expiresAt }
  }

  get(key) {
    const item = this.items.get(key);
    if (!item) return undefined;
    if (item.expiresAt !== undefined && item.expiresAt <= Date.now()) {
      this.items.delete(key);
      return undefined;
    }
    return item.payload;
  }

  set(key, payload, expiresIn) {
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    this.items.set(key, { payload, expiresAt });
  }

  delete(key) {
    this.items.delete(key);
  }

  *entries(model) {
    const prefix = `${model}:`;
    for (const key of [...this.items.keys()]) {
      if (!key.startsWith(prefix)) continue;
      const payload = this.get(key);
      if (payload) yield [key.slice(prefix.length), payload];
    }
  }
}

const store = new Store();

class Adapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    store.set(this.key(id), payload, expiresIn);
  }

  async find(id) {
    return store.get(this.key(id));
  }

  async findByUid(uid) {
    for (const [, payload] of store.entries(this.model)) {
      if (payload.uid === uid) return payload;
    }
    return undefined;
  }

  async findByUserCode(userCode) {
    for (const [, payload] of store.entries(this.model)) {
      if (payload.userCode === userCode) return payload;
    }
    return undefined;
  }

  async consume(id) {
    const payload = store.get(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const [id, payload] of store.entries(this.model)) {
      if (payload.grantId === grantId) store.delete(this.key(id));
    }
  }
}

// Revokes every grant (and with it every token) and every sign-in session of one account.
async function revokeAccount(accountId) {
  const models = ['AccessToken', 'AuthorizationCode', 'RefreshToken'];
  let grants = 0;
  for (const [grantId, payload] of store.entries('Grant')) {
    if (payload.accountId !== accountId) continue;
    for (const model of models) await new Adapter(model).revokeByGrantId(grantId);
    store.delete(`Grant:${grantId}`);
    grants += 1;
  }
  let sessions = 0;
  for (const [id, payload] of store.entries('Session')) {
    if (payload.accountId !== accountId) continue;
    store.delete(`Session:${id}`);
    sessions += 1;
  }
  return { grants, sessions };
}

// ---------------------------------------------------------------------------------------------
// 2. Listen first, so the issuer carries the real port.

let handler = (_req, res) => {
  res.statusCode = 503;
  res.end('starting');
};
const server = http.createServer((req, res) => handler(req, res));
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(settings.port, settings.host, resolve);
});
const { port } = server.address();
const hostForURL = settings.host.includes(':') ? `[${settings.host}]` : settings.host;
const issuer = `http://${hostForURL}:${port}`;

// ---------------------------------------------------------------------------------------------
// 3. The provider.

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  adapter: Adapter,
  clients,
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile'],
  responseTypes: ['code'],
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    // Resource servers (introspection-only clients) may introspect any token; other clients only
    // their own.
    introspection: {
      enabled: true,
      allowedPolicy: (_ctx, client, token) => introspectors.has(client.clientId) || client.clientId === token.clientId,
    },
    revocation: {
      enabled: true,
      allowedPolicy: (_ctx, client, token) => client.clientId === token.clientId,
    },
    userinfo: { enabled: true },
    rpInitiatedLogout: { enabled: false },
    resourceIndicators: {
      enabled: true,
      // Requests without a resource parameter get the SMTP resource, as with a provider whose
      // scopes name the resource (https://outlook.office.com/SMTP.Send).
      defaultResource: () => settings.resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resourceIndicator) => {
        if (resourceIndicator !== settings.resource) {
          throw new Provider.errors.InvalidTarget();
        }
        return {
          scope: settings.resourceScopes.join(' '),
          audience: settings.resource,
          accessTokenTTL: settings.accessTTL,
          accessTokenFormat: 'opaque',
        };
      },
    },
  },
  formats: {
    bitsOfOpaqueRandomness: (_ctx, token) => (token.kind === 'AccessToken' ? settings.opaqueTokenBits : 256),
  },
  // The mail server reads the mailbox from the introspection response.
  extraTokenClaims: async (_ctx, token) => {
    const account = accounts.get(token.accountId);
    return account ? { email: account.email, username: account.email } : undefined;
  },
  // Refresh tokens for every client allowed the refresh_token grant: oidc-provider otherwise issues
  // them only for offline_access, which it keeps only when the request carries prompt=consent.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  expiresWithSession: async () => false,
  // Every refresh returns a new refresh token; oidc-provider revokes the whole grant when an
  // already-used refresh token is presented again.
  rotateRefreshToken: true,
  ttl: {
    AccessToken: settings.accessTTL,
    AuthorizationCode: 60,
    IdToken: 3600,
    Interaction: 600,
    Session: 24 * 3600,
    Grant: settings.refreshTTL,
    RefreshToken: settings.refreshTTL,
  },
  findAccount: async (_ctx, id) => {
    const account = accounts.get(id);
    if (!account) return undefined;
    return {
      accountId: id,
      claims: async () => ({
        sub: id,
        email: account.email,
        email_verified: true,
        name: account.name,
      }),
    };
  },
  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = page('Error', `<p id="error">${escape(out.error)}: ${escape(out.error_description ?? '')}</p>`);
  },
});

// Error events carry no token values: only names and descriptions.
for (const event of ['server_error', 'grant.error', 'introspection.error', 'revocation.error', 'authorization.error']) {
  provider.on(event, (_ctx, err) => log(event, { error: err?.error ?? err?.name, description: err?.error_description ?? err?.message }));
}
provider.on('grant.revoked', (_ctx, grantId) => log('grant revoked', { grantId }));
provider.on('refresh_token.consumed', (token) => log('refresh token rotated', { grantId: token.grantId }));

// ---------------------------------------------------------------------------------------------
// 4. Sign-in and consent pages.

function escape(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escape(title)}</title></head>
<body><h1>${escape(title)}</h1>
${body}
</body></html>
`;
}

function loginForm(uid, { loginHint = '', error = '' } = {}) {
  return page('Sign in', `${error ? `<p id="error">${escape(error)}</p>` : ''}
<form id="login-form" method="post" action="/interaction/${escape(uid)}/login">
<label>Login <input type="text" name="login" id="login" autocomplete="off" value="${escape(loginHint)}" required></label>
<label>Password <input type="password" name="password" id="password" required></label>
<button type="submit" id="submit" name="submit" value="login">Sign in</button>
</form>`);
}

function consentForm(uid, clientId, scopes) {
  return page('Allow access', `<p>Application <strong id="client">${escape(clientId)}</strong> asks for: <span id="scopes">${escape(scopes.join(' '))}</span></p>
<form id="consent-form" method="post" action="/interaction/${escape(uid)}/confirm">
<button type="submit" id="submit" name="submit" value="allow">Allow</button>
</form>
<form id="deny-form" method="post" action="/interaction/${escape(uid)}/abort">
<button type="submit" id="deny" name="deny" value="deny">Deny</button>
</form>`);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, body, type = 'text/html; charset=utf-8') {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}

async function handleInteraction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, page('Error', '<p id="error">interaction mismatch</p>'));
    return;
  }
  const { prompt, params, session } = details;

  if (req.method === 'GET' && action === '') {
    if (prompt.name === 'login') {
      send(res, 200, loginForm(uid, { loginHint: params.login_hint ?? '' }));
      return;
    }
    if (prompt.name === 'consent') {
      const scopes = [
        ...(prompt.details.missingOIDCScope ?? []),
        ...Object.values(prompt.details.missingResourceScopes ?? {}).flat(),
      ];
      send(res, 200, consentForm(uid, params.client_id, scopes));
      return;
    }
    send(res, 501, page('Error', `<p id="error">unsupported prompt ${escape(prompt.name)}</p>`));
    return;
  }

  if (req.method === 'POST' && action === 'login') {
    const form = await readForm(req);
    const account = accounts.get(form.get('login') ?? '');
    if (!account || account.password !== (form.get('password') ?? '')) {
      log('sign-in refused', { login: form.get('login') ?? '' });
      send(res, 200, loginForm(uid, { loginHint: form.get('login') ?? '', error: 'Invalid login or password.' }));
      return;
    }
    log('signed in', { account: account.login });
    await provider.interactionFinished(req, res, { login: { accountId: account.login } }, { mergeWithLastSubmission: false });
    return;
  }

  if (req.method === 'POST' && action === 'confirm') {
    await readForm(req);
    if (!session?.accountId) {
      send(res, 400, page('Error', '<p id="error">not signed in</p>'));
      return;
    }
    let grant;
    if (details.grantId) {
      grant = await provider.Grant.find(details.grantId);
    }
    if (!grant) {
      grant = new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    }
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    if (d.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const grantId = await grant.save();
    log('consent given', { account: session.accountId, client: params.client_id });
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }

  if (action === 'abort') {
    if (req.method === 'POST') await readForm(req);
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }

  send(res, 405, page('Error', '<p id="error">method not allowed</p>'));
}

// Test-only: revoke every grant, refresh token, access token and session of one account.
async function handleTestRevoke(req, res, url) {
  if (req.method !== 'POST') {
    send(res, 405, '{"error":"method not allowed"}\n', 'application/json');
    return;
  }
  const account = url.searchParams.get('account') ?? '';
  if (!accounts.has(account)) {
    send(res, 404, '{"error":"unknown account"}\n', 'application/json');
    return;
  }
  const result = await revokeAccount(account);
  log('test revoke', { account, ...result });
  send(res, 200, `${JSON.stringify(result)}\n`, 'application/json');
}

// Test-only: destroy one access token and nothing else. The standard revocation endpoint revokes
// the token's whole grant (oidc-provider revokes by grant id); this leaves the grant and its
// refresh token valid, as a provider does whose resource server stops accepting one token.
async function handleTestDropAccessToken(req, res) {
  if (req.method !== 'POST') {
    send(res, 405, '{"error":"method not allowed"}\n', 'application/json');
    return;
  }
  const form = await readForm(req);
  const token = await provider.AccessToken.find(form.get('token') ?? '');
  if (!token) {
    send(res, 404, '{"error":"unknown access token"}\n', 'application/json');
    return;
  }
  await token.destroy();
  log('test drop access token', { account: token.accountId, client: token.clientId });
  send(res, 200, '{"dropped":1}\n', 'application/json');
}

const providerCallback = provider.callback();
const interactionPath = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm|abort))?\/?$/;

handler = async (req, res) => {
  const url = new URL(req.url, issuer);
  const started = Date.now();
  res.on('finish', () => log('request', {
    method: req.method, path: url.pathname, status: res.statusCode, ms: Date.now() - started,
  }));
  try {
    const m = interactionPath.exec(url.pathname);
    if (m) {
      await handleInteraction(req, res, m[1], m[2] ?? '');
      return;
    }
    if (settings.testRoutes && url.pathname === '/test/revoke') {
      await handleTestRevoke(req, res, url);
      return;
    }
    if (settings.testRoutes && url.pathname === '/test/drop-access-token') {
      await handleTestDropAccessToken(req, res);
      return;
    }
    if (url.pathname === '/healthz') {
      send(res, 200, 'ok\n', 'text/plain');
      return;
    }
    providerCallback(req, res);
  } catch (err) {
    log('request failed', { path: url.pathname, error: err?.name, description: err?.error_description ?? err?.message });
    if (!res.headersSent) {
      const status = err?.statusCode ?? 500;
      send(res, status, page('Error', `<p id="error">${escape(err?.error ?? err?.message ?? 'error')}</p>`));
    } else {
      res.end();
    }
  }
};

// ---------------------------------------------------------------------------------------------
// 5. Ready.

const ready = {
  ready: true,
  issuer,
  authorization_endpoint: `${issuer}/auth`,
  token_endpoint: `${issuer}/token`,
  revocation_endpoint: `${issuer}/token/revocation`,
  introspection_endpoint: `${issuer}/token/introspection`,
  userinfo_endpoint: `${issuer}/me`,
  jwks_uri: `${issuer}/jwks`,
  test_revoke_endpoint: settings.testRoutes ? `${issuer}/test/revoke` : undefined,
  resource: settings.resource,
  access_ttl: settings.accessTTL,
};
process.stdout.write(`${JSON.stringify(ready)}\n`);
log('listening', { issuer, accessTTL: settings.accessTTL, clients: clients.map((c) => c.client_id) });

const shutdown = (signal) => {
  log('stopping', { signal });
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
  server.closeAllConnections?.();
};
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

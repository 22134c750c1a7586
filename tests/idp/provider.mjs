// A real OpenID Provider (oidc-provider) for the gateway's integration tests
// and benchmark, started by `gateway_tests::idp::Idp` as
//
//     node provider.mjs CONFIG.json
//
// CONFIG: { cert, key (PEM paths), host, port (optional, 0 = any),
//           clients: [{ client_id, client_secret, redirect_uris }] }
//
// Once listening it prints one line to stdout, {"issuer":"https://HOST:PORT"},
// and nothing else there. It exits when stdin closes (the test process that
// started it is gone, even after a crash) and on SIGTERM.
//
// Besides the provider's own endpoints it serves:
// - GET /interaction/:uid and POST /interaction/:uid/login: a minimal sign-in
//   form (devInteractions is off) for the users below, any non-empty password;
// - POST /test/tamper: claim overrides for the ID tokens of later token
//   responses, re-signed with the provider's key so they still verify;
// - GET /test/stats: token-endpoint requests served and the time spent.
// These are test tools for loopback only.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as https from 'node:https';

import Provider from 'oidc-provider';

// oidc-provider prints its notices with console.info, which is stdout: keep
// stdout for the ready line alone.
console.info = console.error;

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));

/** The test users, keyed by account id (= login name). */
const USERS = {
  alice: {
    email: 'alice@corp.test', email_verified: true, name: 'Alice', groups: ['engineering'],
  },
  bob: {
    email: 'bob@corp.test', email_verified: true, name: 'Bob', groups: ['sales'],
  },
  mallory: {
    email: 'mallory@corp.test', email_verified: false, name: 'Mallory', groups: ['engineering'],
  },
};

// One RSA key per run: its private half re-signs tampered ID tokens.
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }), kid: 'test-signing-key', alg: 'RS256', use: 'sig',
};

/** Claim overrides for later ID tokens; empty = untouched. */
let tamper = {};
const stats = { token_requests: 0, token_ms_total: 0 };

function b64urlJson(value) {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/** `jwt` with `overrides` applied to its payload, signed again with our key. */
function tampered(jwt, overrides) {
  const [header, payload] = jwt.split('.');
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  for (const [name, value] of Object.entries(overrides)) {
    if (value === null) delete claims[name];
    else claims[name] = value;
  }
  const signingInput = `${header}.${b64urlJson(claims)}`;
  const { alg, kid } = JSON.parse(Buffer.from(header, 'base64url').toString('utf8'));
  if (alg !== 'RS256' || kid !== signingJwk.kid) {
    throw new Error(`cannot re-sign an ID token with alg ${alg} and kid ${kid}`);
  }
  const signature = crypto.sign('sha256', Buffer.from(signingInput), privateKey);
  return `${signingInput}.${signature.toString('base64url')}`;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function send(res, status, type, body) {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

function loginPage(uid, { login = '', error } = {}) {
  const action = `/interaction/${encodeURIComponent(uid)}/login`;
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>Sign in</title></head>
<body>
<h1>Sign in</h1>
${error ? `<p id="error">${escapeHtml(error)}</p>` : ''}
<form method="post" action="${escapeHtml(action)}">
<input name="login" id="login" value="${escapeHtml(login)}" autofocus>
<input name="password" type="password" id="password">
<button type="submit" id="submit">Sign in</button>
</form>
</body></html>
`;
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

/** GET /interaction/:uid and POST /interaction/:uid/login. */
async function interaction(provider, req, res, path) {
  const [, , uid, action] = path.split('/');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, 'text/plain', 'interaction does not match its cookie\n');
    return;
  }
  if (details.prompt.name === 'consent') {
    // loadExistingGrant grants every requested scope, so this only happens
    // if the provider asks anyway: grant what it says is missing.
    const grant = new provider.Grant({
      accountId: details.session.accountId, clientId: details.params.client_id,
    });
    const { missingOIDCScope = [], missingOIDCClaims = [] } = details.prompt.details;
    grant.addOIDCScope(missingOIDCScope.join(' '));
    grant.addOIDCClaims(missingOIDCClaims);
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, {
      mergeWithLastSubmission: true,
    });
    return;
  }
  if (req.method === 'GET' && action === undefined) {
    send(res, 200, 'text/html; charset=utf-8', loginPage(uid));
    return;
  }
  if (req.method === 'POST' && action === 'login') {
    const form = new URLSearchParams(await readBody(req));
    const login = form.get('login') ?? '';
    const password = form.get('password') ?? '';
    if (!Object.hasOwn(USERS, login) || password === '') {
      send(res, 200, 'text/html; charset=utf-8', loginPage(uid, {
        login, error: 'Unknown user or empty password.',
      }));
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: login } }, {
      mergeWithLastSubmission: false,
    });
    return;
  }
  send(res, 405, 'text/plain', 'method not allowed\n');
}

/** POST /test/tamper and GET /test/stats. */
async function control(req, res, path) {
  if (req.method === 'POST' && path === '/test/tamper') {
    const overrides = JSON.parse(await readBody(req));
    if (overrides === null || typeof overrides !== 'object' || Array.isArray(overrides)) {
      send(res, 400, 'text/plain', 'expected a JSON object of claim overrides\n');
      return;
    }
    tamper = overrides;
    send(res, 204, 'text/plain', '');
    return;
  }
  if (req.method === 'GET' && path === '/test/stats') {
    send(res, 200, 'application/json', JSON.stringify(stats));
    return;
  }
  send(res, 404, 'text/plain', 'not found\n');
}

function providerFor(issuer) {
  const provider = new Provider(issuer, {
    clients: config.clients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      redirect_uris: c.redirect_uris,
      response_types: ['code'],
      grant_types: ['authorization_code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    })),
    jwks: { keys: [signingJwk] },
    responseTypes: ['code'],
    pkce: { required: () => true },
    scopes: ['openid', 'email', 'profile', 'groups'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    // Scope claims go into the ID token itself (the gateway reads only it).
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: false } },
    // Errors as plain text, so a failing test shows them readably.
    async renderError(ctx, out) {
      ctx.type = 'text/plain; charset=utf-8';
      ctx.body = `${Object.entries(out).map(([k, v]) => `${k}: ${v}`).join('\n')}\n`;
    },
    interactions: { url: (ctx, i) => `/interaction/${i.uid}` },
    cookies: { keys: ['gateway-test-idp-cookie-key-1', 'gateway-test-idp-cookie-key-2'] },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      IdToken: 3600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
    async findAccount(ctx, sub) {
      if (!Object.hasOwn(USERS, sub)) return undefined;
      return { accountId: sub, claims: async () => ({ sub, ...USERS[sub] }) };
    },
    // Consent is granted without asking: every requested scope, at once.
    async loadExistingGrant(ctx) {
      const { oidc } = ctx;
      const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
      const grant = (grantId && await oidc.provider.Grant.find(grantId))
        || new oidc.provider.Grant({ accountId: oidc.account.accountId, clientId: oidc.client.clientId });
      grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
      await grant.save();
      return grant;
    },
  });

  provider.on('server_error', (ctx, err) => console.error('server_error', ctx.path, err));

  // Token endpoint: counted and timed; ID tokens tampered with on request.
  provider.use(async (ctx, next) => {
    if (ctx.path !== '/token') {
      await next();
      return;
    }
    const start = process.hrtime.bigint();
    try {
      await next();
      if (Object.keys(tamper).length && ctx.body && typeof ctx.body.id_token === 'string') {
        ctx.body = { ...ctx.body, id_token: tampered(ctx.body.id_token, tamper) };
      }
    } finally {
      stats.token_requests += 1;
      stats.token_ms_total += Number(process.hrtime.bigint() - start) / 1e6;
    }
  });
  return provider;
}

let provider;
let handle;
const server = https.createServer({
  cert: fs.readFileSync(config.cert),
  key: fs.readFileSync(config.key),
}, (req, res) => {
  const path = new URL(req.url, 'https://idp.invalid').pathname;
  let work;
  if (path.startsWith('/interaction/')) work = interaction(provider, req, res, path);
  else if (path.startsWith('/test/')) work = control(req, res, path);
  else {
    handle(req, res);
    return;
  }
  work.catch((err) => {
    console.error(`${req.method} ${path}:`, err);
    if (!res.headersSent) send(res, 400, 'text/plain', `${err.name}: ${err.message}\n`);
    else res.destroy();
  });
});

server.listen(config.port ?? 0, config.host, async () => {
  const issuer = `https://${config.host}:${server.address().port}`;
  provider = providerFor(issuer);
  handle = provider.callback();
  // The provider checks its clients' metadata on first use: fail here, with
  // the reason on stderr, rather than at the first request of a test.
  for (const { client_id: id } of config.clients) {
    try {
      await provider.Client.find(id);
    } catch (err) {
      console.error(`client ${id}: ${err.message}: ${err.error_description ?? ''}`);
      process.exit(1);
    }
  }
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

process.on('SIGTERM', () => process.exit(0));
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();

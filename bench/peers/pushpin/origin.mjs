// The GRIP origin behind Pushpin for the c10m benchmark contract (node:http only).
//
//   node origin.mjs --origin HOST:PORT --admin HOST:PORT --publish HOST:PORT --client HOST:PORT
//
// Origin port (Pushpin's route target):
//   GET /sse?user=ID&topics=A,B   answers `Grip-Hold: stream` with the channels u:ID, all,
//                                 t:A, t:B; Pushpin holds the stream open.
//   POST /ws?...                  WebSocket-over-HTTP (application/websocket-events): the
//                                 OPEN event is accepted with `Sec-WebSocket-Extensions:
//                                 grip` and one `c:` subscribe control message per channel.
// Admin port (the load generator's):
//   POST /publish?user=ID | ?topic=T | ?all   forwards the body to Pushpin's HTTP publish
//                                 endpoint as one item with an http-stream format (an SSE
//                                 event) and a ws-message format, and answers 202 once
//                                 Pushpin has accepted it.
//   GET /healthz                  200 once a request through Pushpin reaches this origin.
import http from 'node:http';

function arg(name) {
    const i = process.argv.indexOf(`--${name}`);
    if (i < 0) throw new Error(`--${name} is required`);
    const s = process.argv[i + 1];
    const j = s.lastIndexOf(':');
    return { host: s.slice(0, j), port: Number(s.slice(j + 1)) };
}

const origin = arg('origin');
const admin = arg('admin');
const publish = arg('publish');
const client = arg('client');
const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });

// Exit with Pushpin: the runner is this process's parent.
const parent = process.ppid;
setInterval(() => {
    if (process.ppid !== parent) process.exit(0);
}, 500).unref();

function channels(query) {
    const user = query.get('user') || '';
    const topics = (query.get('topics') || '').split(',').filter((t) => t !== '');
    return [`u:${user}`, 'all', ...topics.map((t) => `t:${t}`)];
}

// A complete answer with a Content-Length (the load generator reads no chunked answers).
function reply(res, status, body = '', headers = {}) {
    res.writeHead(status, { ...headers, 'Content-Length': Buffer.byteLength(body, 'latin1') });
    res.end(body, 'latin1');
}

function readBody(req, done) {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => done(Buffer.concat(chunks)));
}

// One event of the websocket-events format: `TYPE` or `TYPE <hex length>` + content.
function wsEvent(type, content) {
    if (content === undefined) return `${type}\r\n`;
    return `${type} ${Buffer.byteLength(content).toString(16)}\r\n${content}\r\n`;
}

function originHandler(req, res) {
    const url = new URL(req.url, 'http://origin');
    if (url.pathname === '/healthz') {
        reply(res, 200, 'ok\n');
        return;
    }
    if (url.pathname === '/sse' && req.method === 'GET') {
        res.writeHead(200, {
            'Content-Type': 'text/event-stream',
            'Cache-Control': 'no-cache',
            'Grip-Hold': 'stream',
            'Grip-Channel': channels(url.searchParams).join(', '),
        });
        res.end();
        return;
    }
    if (url.pathname === '/ws' && req.method === 'POST') {
        readBody(req, (body) => {
            const text = body.toString('latin1');
            let out = '';
            const headers = { 'Content-Type': 'application/websocket-events' };
            if (text.startsWith('OPEN')) {
                headers['Sec-WebSocket-Extensions'] = 'grip';
                out += wsEvent('OPEN');
                for (const channel of channels(url.searchParams)) {
                    out += wsEvent('TEXT', `c:${JSON.stringify({ type: 'subscribe', channel })}`);
                }
            } else if (text.includes('CLOSE')) {
                out += wsEvent('CLOSE', '\x03\xe8');
            }
            reply(res, 200, out, headers);
        });
        return;
    }
    reply(res, 404);
}

function channelOf(query) {
    if (query.has('user')) return `u:${query.get('user')}`;
    if (query.has('topic')) return `t:${query.get('topic')}`;
    if (query.has('all')) return 'all';
    return null;
}

function adminHandler(req, res) {
    const url = new URL(req.url, 'http://admin');
    if (url.pathname === '/healthz') {
        // End to end: client port → Pushpin → this origin.
        const probe = http.get({ ...client, path: '/healthz', timeout: 1000 }, (r) => {
            r.resume();
            reply(res, r.statusCode === 200 ? 200 : 503, r.statusCode === 200 ? 'ok\n' : '');
        });
        probe.on('error', () => reply(res, 503));
        probe.on('timeout', () => probe.destroy());
        return;
    }
    if (url.pathname !== '/publish' || req.method !== 'POST') {
        reply(res, 404);
        return;
    }
    const channel = channelOf(url.searchParams);
    readBody(req, (body) => {
        if (channel === null) {
            reply(res, 400, 'user, topic or all\n');
            return;
        }
        const content = body.toString('utf8');
        const item = JSON.stringify({
            items: [{
                channel,
                formats: {
                    'http-stream': { content: `data: ${content}\n\n` },
                    'ws-message': { content },
                },
            }],
        });
        const up = http.request({
            ...publish,
            agent,
            method: 'POST',
            path: '/publish/',
            headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(item) },
        }, (r) => {
            r.resume();
            if (r.statusCode === 200) reply(res, 202, 'accepted\n');
            else reply(res, 502, `pushpin answered ${r.statusCode}\n`);
        });
        up.on('error', (e) => reply(res, 502, `${e.message}\n`));
        up.end(item);
    });
}

const originServer = http.createServer(originHandler);
originServer.keepAliveTimeout = 60_000;
originServer.listen(origin.port, origin.host);
const adminServer = http.createServer(adminHandler);
adminServer.keepAliveTimeout = 600_000;
adminServer.listen(admin.port, admin.host);

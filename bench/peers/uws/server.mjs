// uWebSockets.js serving the c10m benchmark contract, one process per core.
//
//   node server.mjs --listen HOST:PORT --admin HOST:PORT --procs N
//
// The primary forks N workers and relays publishes between them; it holds no connections.
// Every worker is a uWS App listening on the client port (uSockets sets SO_REUSEPORT on
// Linux, so the kernel spreads connections over the workers) and a second App on the admin
// port. A WebSocket on /ws?user=ID&topics=A,B subscribes to the uWS topics `u:ID`, `all` and
// `t:A`, `t:B`. POST /publish?user=ID | ?topic=T | ?all publishes the body with uWS's own
// pub/sub in the worker that got the request, sends it to the primary, which hands it to
// every other worker to publish there too, and answers 202. The admin port opens only once
// every worker listens on the client port, so /healthz means all are up.
import { fork } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { App, DISABLED } from 'uws-pack';

function arg(name, fallback) {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : fallback;
}

function hostPort(s) {
    const i = s.lastIndexOf(':');
    return [s.slice(0, i), Number(s.slice(i + 1))];
}

// The uWS topic a publish query names; null when it names none.
function topicOf(query) {
    const q = new URLSearchParams(query);
    if (q.has('user')) return `u:${q.get('user')}`;
    if (q.has('topic')) return `t:${q.get('topic')}`;
    if (q.has('all')) return 'all';
    return null;
}

function primary() {
    const procs = Number(arg('procs', availableParallelism()));
    const workers = [];
    let ready = 0;
    for (let i = 0; i < procs; i++) {
        const w = fork(new URL(import.meta.url).pathname, [...process.argv.slice(2), '--worker'], {
            serialization: 'advanced',
        });
        w.on('message', (m) => {
            if (m === 'ready') {
                ready += 1;
                if (ready === procs) for (const x of workers) x.send('open-admin');
                return;
            }
            for (const x of workers) if (x !== w) x.send(m);
        });
        w.on('exit', (code) => {
            console.error(`uws worker ${i} exited (${code}); stopping`);
            stop();
        });
        workers.push(w);
    }
    const stop = () => {
        for (const w of workers) w.kill('SIGTERM');
        process.exit(0);
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
}

function worker() {
    const [host, port] = hostPort(arg('listen', '127.0.0.1:8080'));
    const [adminHost, adminPort] = hostPort(arg('admin', '127.0.0.1:8081'));
    const app = App();
    app.ws('/ws', {
        compression: DISABLED,
        maxPayloadLength: 64 * 1024,
        // uWS sends pings after idleTimeout/2 of silence and closes after idleTimeout.
        idleTimeout: 120,
        maxBackpressure: 1 << 20,
        upgrade: (res, req, context) => {
            const q = new URLSearchParams(req.getQuery() || '');
            const user = q.get('user') || '';
            const topics = (q.get('topics') || '').split(',').filter((t) => t !== '');
            res.upgrade(
                { user, topics },
                req.getHeader('sec-websocket-key'),
                req.getHeader('sec-websocket-protocol'),
                req.getHeader('sec-websocket-extensions'),
                context,
            );
        },
        open: (ws) => {
            const { user, topics } = ws.getUserData();
            ws.subscribe(`u:${user}`);
            ws.subscribe('all');
            for (const t of topics) ws.subscribe(`t:${t}`);
        },
        message: () => {},
    });
    app.listen(host, port, (token) => {
        if (!token) {
            console.error(`uws: cannot listen on ${host}:${port}`);
            process.exit(1);
        }
        process.send('ready');
    });

    process.on('message', (m) => {
        if (m === 'open-admin') {
            openAdmin(app, adminHost, adminPort);
            return;
        }
        app.publish(m.topic, m.body, false);
    });
}

function openAdmin(app, host, port) {
    const admin = App();
    admin.get('/healthz', (res) => {
        res.end('ok\n');
    });
    admin.post('/publish', (res, req) => {
        const topic = topicOf(req.getQuery() || '');
        const chunks = [];
        let aborted = false;
        res.onAborted(() => {
            aborted = true;
        });
        res.onData((ab, isLast) => {
            // The ArrayBuffer is only valid during the callback: copy it.
            chunks.push(Buffer.from(ab.slice(0)));
            if (!isLast || aborted) return;
            if (topic === null) {
                res.cork(() => res.writeStatus('400 Bad Request').end('user, topic or all\n'));
                return;
            }
            const body = Buffer.concat(chunks);
            app.publish(topic, body, false);
            process.send({ topic, body });
            res.cork(() => res.writeStatus('202 Accepted').end('accepted\n'));
        });
    });
    admin.listen(host, port, (token) => {
        if (!token) {
            console.error(`uws: cannot listen on ${host}:${port}`);
            process.exit(1);
        }
    });
}

if (process.argv.includes('--worker')) {
    worker();
} else {
    primary();
}

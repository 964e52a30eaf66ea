// POST /publish → Nchan's publisher (a subrequest) → 202.
// Nchan answers 201 when the channel has subscribers and 202 when it has none; the contract
// (and c10m-loadgen) expects 202 with a Content-Length for an accepted publish.
async function publish(r) {
    const reply = await r.subrequest('/_publish', {
        method: 'POST',
        args: r.variables.args,
        body: r.requestText || '',
    });
    if (reply.status >= 200 && reply.status < 300) {
        r.return(202, 'accepted\n');
    } else {
        r.return(reply.status, reply.responseText || '');
    }
}

export default { publish };

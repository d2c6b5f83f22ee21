// The app of the VM memory test (deploy/vm_oom_linux_test.go). GET / answers;
// /grow allocates outside the V8 heap (Buffers, every page written), still
// answering, until the kernel's OOM killer stops it; /heap fills the V8 heap
// until V8 gives up; /hold?mb=N keeps N MB more of Buffers. At start it spawns a detached
// grandchild in its own session, which a careless tree kill would leave behind.
'use strict';
const http = require('http');
const { spawn } = require('child_process');

const port = Number(process.env.PORT || 3000);
const held = [];
spawn('sleep', ['infinity'], { detached: true, stdio: 'ignore' }).unref();

http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  switch (url.pathname) {
    case '/grow':
      // 16 MB a turn of the event loop, which keeps answering probes.
      res.end('growing\n', function grow() {
        for (let i = 0; i < 16; i++) held.push(Buffer.alloc(1 << 20, 1));
        setImmediate(grow);
      });
      return;
    case '/heap':
      res.end('filling the heap\n', () => {
        const arrays = [];
        for (;;) arrays.push(new Array(1 << 20).fill(0.5)); // 8 MB each
      });
      return;
    case '/hold': {
      const mb = Number(url.searchParams.get('mb') || 0);
      for (let i = 0; i < mb; i++) held.push(Buffer.alloc(1 << 20, 1));
      res.end(`holding ${held.length} MB\n`);
      return;
    }
    default:
      res.end(`memapp pid ${process.pid}\n`);
  }
}).listen(port, '127.0.0.1', () => console.log(`memapp listening on 127.0.0.1:${port}`));

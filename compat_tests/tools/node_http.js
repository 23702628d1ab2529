// node's http server: a 100 KB body on every path.  node node_http.js BIND PORT
const http = require("http");
const body = Buffer.alloc(102400, "n");
http.createServer((req, res) => { res.end(body); }).listen(+process.argv[3], process.argv[2]);

// node's http.get, 20 requests on a keep-alive agent: prints statuses and
// the bodies' sha256.  node node_get.js URL
const http = require("http");
const crypto = require("crypto");
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
const seen = new Set();
let left = 20;
for (let i = 0; i < 20; i++) {
  http.get(process.argv[2], { agent }, (res) => {
    const h = crypto.createHash("sha256");
    res.on("data", (d) => h.update(d));
    res.on("end", () => {
      seen.add(res.statusCode + " " + h.digest("hex"));
      if (--left === 0) { console.log([...seen].sort().join("\n")); agent.destroy(); }
    });
  }).on("error", (e) => { console.log("error " + e.code); process.exit(1); });
}

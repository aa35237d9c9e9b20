// An SDK service for tests/t_fail_linkd_kill.sh (sdk/typescript, built into
// dist/): route GET /sdkfail/:n and WebSocket path /ws/sdkfail with an "echo"
// handler. It keeps the SDK's own reconnection (defaults) and logger: the
// SDK logs "registered with linkd" at each (re-)registration on stderr; this
// file also prints REGISTERED / DISCONNECTED on stdout.
//   node tests/fail_sdk_svc.js SOCKET_PATH
"use strict";
const path = require("path");
const { createService } = require(path.join(__dirname, "..", "sdk", "typescript", "dist"));

const service = createService({
  name: "sdkfail",
  version: "1.0.0",
  socketPath: process.argv[2],
  websocket: { enabled: true, path: "/ws/sdkfail" },
});
service.action("ping", { route: "/sdkfail/:n" }, (ctx) => ({ n: ctx.params.n, pid: process.pid }));
service.ws.on("echo", (ctx) => ctx.message);
service.on("registered", () => console.log("REGISTERED"));
service.on("disconnected", () => console.log("DISCONNECTED"));
service.start().catch((err) => {
  console.log("START_FAILED " + err.message);
  process.exit(3);
});
process.on("SIGTERM", () => service.stop().then(() => process.exit(0)));

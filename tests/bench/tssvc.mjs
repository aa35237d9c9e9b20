// The TypeScript bench service of `make bench-peers`: the bench's work written
// as a user would write it on linkd-sdk (sdk/typescript), nothing tuned:
//   ws "echo"   -> returns the message (the reply to the client's id)
//   ws "join"   -> ctx.join(room), returns {joined: room}
//   ws "fanout" -> ctx.to(room).except(ctx.socket.id).emit("fanout", message)
//   GET /bench/hello -> "hello\n"
// Usage: node tssvc.mjs SOCKET_PATH [WS_PATH]   (prints "registered" when ready)
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
// LINKD_SDK_DIR: another build of the SDK (e.g. an older one, for a before/after)
const { createService, reply, silentLogger } = require(process.env.LINKD_SDK_DIR || path.join(here, "../../sdk/typescript"));

const socketPath = process.argv[2] || "./run/linkd.sock";
const wsPath = process.argv[3] || "/ws/bench";

const service = createService({ name: "tsbench", version: "1.0.0", socketPath, logger: silentLogger,
                                websocket: { enabled: true, path: wsPath } });

service.action("hello", { route: "/bench/hello" }, () => reply("hello\n", { contentType: "text/plain" }));

service.ws.on("echo", (ctx) => ctx.message);

service.ws.on("join", async (ctx) => {
  const room = ctx.message?.room;
  await ctx.join(room);
  return { joined: room };
});

service.ws.on("fanout", async (ctx) => {
  await ctx.to(ctx.message.room).except(ctx.socket.id).emit("fanout", ctx.message);
});

await service.start();
console.log("registered");
const stop = () => { service.stop().finally(() => process.exit(0)); };
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

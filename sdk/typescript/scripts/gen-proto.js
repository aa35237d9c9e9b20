// Build step: copies the service protocol next to the compiled SDK (dist/ is
// self-contained) and generates the static protobuf code from it with
// protobufjs's own generator (pbjs -t static-module, CommonJS on
// protobufjs/minimal) into dist/linkd_pb.js. Generated code is build output:
// it is never committed.
const fs = require("fs");
const path = require("path");
const { pbjs } = require("protobufjs-cli");

const src = path.resolve(__dirname, "../../../proto/linkd.proto");
const dist = path.resolve(__dirname, "../dist");
fs.mkdirSync(dist, { recursive: true });
fs.copyFileSync(src, path.join(dist, "linkd.proto"));
const out = path.join(dist, "linkd_pb.js");
pbjs.main(["-t", "static-module", "-w", "commonjs", "--no-comments", "--no-verify", "--no-service", "-o", out, src], (err) => {
  if (err) {
    console.error("pbjs: " + (err.message || err));
    process.exit(1);
  }
});

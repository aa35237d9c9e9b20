// Copies the service protocol next to the compiled SDK, so dist/ is self-contained.
const fs = require("fs");
const path = require("path");
const src = path.resolve(__dirname, "../../../proto/linkd.proto");
const dst = path.resolve(__dirname, "../dist/linkd.proto");
fs.copyFileSync(src, dst);

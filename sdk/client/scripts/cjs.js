// dist/cjs holds the CommonJS build (for require()); the package itself is
// "type": "module", so that folder says it is CommonJS.
import fs from "node:fs";
const dir = new URL("../dist/cjs/", import.meta.url);
fs.writeFileSync(new URL("package.json", dir), JSON.stringify({ type: "commonjs" }) + "\n");

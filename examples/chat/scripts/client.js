// Builds the browser module of linkd-client (sdk/client/src/index.ts) into
// dist/linkd-client.js, which the service serves as /linkd-client.js: the page
// loads it through linkd, never from a CDN. One TypeScript file without
// imports, so transpiling it with this example's own TypeScript is the whole
// build (the same output as sdk/client's `npm run build`, dist/index.js).
const fs = require("fs");
const path = require("path");
const ts = require("typescript");

const src = path.resolve(__dirname, "../../../sdk/client/src/index.ts");
const dst = path.resolve(__dirname, "../dist/linkd-client.js");
const out = ts.transpileModule(fs.readFileSync(src, "utf8"), {
  fileName: src,
  reportDiagnostics: true,
  compilerOptions: { target: ts.ScriptTarget.ES2020, module: ts.ModuleKind.ES2020, removeComments: false },
});
const errors = (out.diagnostics || []).filter((d) => d.category === ts.DiagnosticCategory.Error);
if (errors.length) {
  for (const d of errors) console.error(ts.flattenDiagnosticMessageText(d.messageText, "\n"));
  process.exit(1);
}
fs.mkdirSync(path.dirname(dst), { recursive: true });
fs.writeFileSync(dst, `// linkd-client (sdk/client), built by examples/chat/scripts/client.js\n${out.outputText}`);

// node --test reporter printing one PASS:/FAIL: line per test (the format
// tests/run.sh tallies). Suites and file wrappers are not counted.
import path from "node:path";

function one(line) {
  return String(line).replace(/\s+/g, " ").trim().slice(0, 300);
}

export default async function* reporter(source) {
  for await (const ev of source) {
    if (ev.type !== "test:pass" && ev.type !== "test:fail") continue;
    const d = ev.data;
    if (d.details?.type === "suite") continue;
    if (d.file && d.name === d.file) continue; // a file's own wrapper (failures inside are reported per test)
    const name = `t_client: ${d.name}`;
    if (ev.type === "test:pass") {
      if (d.skip || d.todo) continue;
      yield `PASS: ${name}\n`;
    } else {
      const err = d.details?.error;
      const cause = err?.cause ?? err;
      yield `FAIL: ${name} — ${one(cause?.message ?? cause ?? "failed")}\n`;
    }
  }
}

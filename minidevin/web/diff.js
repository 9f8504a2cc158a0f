// Diffs: a unified patch (diff.patch) rendered per file with added and removed lines
// coloured, and the small before/after of one editor call.

import { h } from "./dom.js";

const MAX_LINES_PER_FILE = 2000; // beyond this a file's diff is cut (the download has it all)

/** Split a unified patch into files: [{name, lines: [text...]}]. */
export function parsePatch(patch) {
  const files = [];
  let current = null;
  for (const line of patch.split("\n")) {
    if (line.startsWith("diff --git ")) {
      const match = line.match(/^diff --git a\/(.*) b\/(.*)$/);
      current = { name: match ? match[2] : line.slice(11), lines: [], added: 0, removed: 0 };
      files.push(current);
      continue;
    }
    if (!current) {
      if (!line.startsWith("--- ")) continue;
      current = { name: "", lines: [], added: 0, removed: 0 }; // a patch without git headers
      files.push(current);
    }
    if (line.startsWith("+++ ")) {
      const name = line.slice(4).replace(/^b\//, "");
      if (name !== "/dev/null" && !current.name) current.name = name;
      continue;
    }
    if (line.startsWith("--- ") && !current.lines.some((l) => l.startsWith("@@"))) continue;
    if (/^(index |new file mode|deleted file mode|similarity |rename |old mode|new mode)/.test(line)) {
      current.lines.push(line);
      continue;
    }
    if (line.startsWith("+")) current.added += 1;
    else if (line.startsWith("-")) current.removed += 1;
    current.lines.push(line);
  }
  for (const file of files) {
    while (file.lines.length && file.lines.at(-1) === "") file.lines.pop();
  }
  return files;
}

function lineClass(line) {
  if (line.startsWith("@@")) return "hunk";
  if (line.startsWith("+")) return "add";
  if (line.startsWith("-")) return "del";
  if (line.startsWith("\\") || /^(index |new file|deleted file|similarity|rename |old mode|new mode)/.test(line)) {
    return "meta";
  }
  return "ctx";
}

/** Lines as a <pre> with one span per line, classed add / del / hunk / ctx. */
export function diffLines(lines, limit = MAX_LINES_PER_FILE) {
  const shown = lines.slice(0, limit);
  const pre = h(
    "pre",
    { class: "diff" },
    shown.map((line) => h("span", { class: `line ${lineClass(line)}` }, line || " ", "\n")),
  );
  if (lines.length > limit) {
    pre.append(h("span", { class: "line meta" }, `… ${lines.length - limit} more lines`));
  }
  return pre;
}

/** The whole patch: one collapsible section per file, with +added −removed counts. */
export function renderPatch(patch) {
  const files = parsePatch(patch);
  if (!files.length) return [h("p", { class: "muted" }, "No changes.")];
  return files.map((file) =>
    h(
      "details",
      { class: "file", open: files.length <= 8 },
      h(
        "summary",
        {},
        h("code", {}, file.name || "(unnamed)"),
        " ",
        h("span", { class: "add-count" }, `+${file.added}`),
        " ",
        h("span", { class: "del-count" }, `−${file.removed}`),
      ),
      diffLines(file.lines),
    ),
  );
}

function prefixed(text, mark, limit = 40) {
  const lines = String(text ?? "").split("\n");
  const shown = lines.slice(0, limit).map((line) => mark + line);
  if (lines.length > limit) shown.push(`\\ … ${lines.length - limit} more lines`);
  return shown;
}

/** The small diff of one editor call (str_replace, insert, create), or null. */
export function editorDiff(input) {
  if (!input || typeof input !== "object") return null;
  if (input.command === "str_replace") {
    return diffLines([...prefixed(input.old_str, "-"), ...prefixed(input.new_str, "+")]);
  }
  if (input.command === "insert") {
    return diffLines([`@@ after line ${input.insert_line ?? "?"} @@`, ...prefixed(input.new_str, "+")]);
  }
  if (input.command === "create") {
    return diffLines(prefixed(input.file_text, "+"));
  }
  return null;
}

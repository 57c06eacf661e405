/**
 * The console's one stylesheet, served by the Worker (no outside assets). Calm on purpose: neutral greys, one accent,
 * colour only where it carries meaning (state, danger), and always beside a word. Tables turn into labelled cards
 * below 640 px, so that every page works at 400 px wide.
 */
export const STYLESHEET = `
:root {
  --bg: #f6f6f3; --panel: #ffffff; --fg: #1c1c1e; --muted: #5b5f66; --line: #d8d8d2; --soft: #eeeee9;
  --accent: #1d5ba6; --accent-fg: #ffffff; --ok: #23703a; --ok-bg: #e5f2e8; --warn: #8a5300; --warn-bg: #fbf0dc;
  --bad: #a8261d; --bad-bg: #fbe7e5; --run: #1d5ba6; --run-bg: #e3edf9; --focus: #f2b705;
  --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  color-scheme: light dark;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #17181a; --panel: #1f2023; --fg: #e8e8e6; --muted: #a4a7ad; --line: #36383c; --soft: #2a2b2f;
    --accent: #7fb0ec; --accent-fg: #0e1a29; --ok: #7dcf92; --ok-bg: #1d3224; --warn: #e9b25c; --warn-bg: #3a2d17;
    --bad: #f28b82; --bad-bg: #3d1f1c; --run: #8ab8f0; --run-bg: #1c2a3c;
  }
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--fg); font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
a { color: var(--accent); text-underline-offset: 2px; }
:focus-visible { outline: 3px solid var(--focus); outline-offset: 2px; }
code, .mono { font-family: var(--mono); font-size: 0.92em; }
h1 { font-size: 1.45rem; line-height: 1.25; margin: 0 0 0.25rem; overflow-wrap: anywhere; }
h2 { font-size: 1.1rem; margin: 0 0 0.6rem; }
h3 { font-size: 1rem; margin: 0 0 0.4rem; }
h4 { font-size: 0.85rem; margin: 0.8rem 0 0.3rem; color: var(--muted); text-transform: uppercase; letter-spacing: 0.04em; }
p { margin: 0 0 0.6rem; }
.visually-hidden { position: absolute !important; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
.skip { position: absolute; left: -999px; top: 0; background: var(--panel); padding: 0.5rem 1rem; z-index: 10; }
.skip:focus { left: 0.5rem; }

.top { display: flex; flex-wrap: wrap; align-items: center; justify-content: space-between; gap: 0.5rem 1rem;
  padding: 0.55rem 1.25rem; background: var(--panel); border-bottom: 1px solid var(--line); }
.top nav { display: flex; flex-wrap: wrap; align-items: center; gap: 0.25rem 1.1rem; }
.top nav a { text-decoration: none; color: var(--fg); padding: 0.2rem 0; border-bottom: 2px solid transparent; }
.top nav a[aria-current="page"] { border-bottom-color: var(--accent); font-weight: 600; }
.top .brand { font-weight: 700; letter-spacing: 0.01em; margin-right: 0.4rem; }
.who { display: flex; flex-wrap: wrap; align-items: center; gap: 0.4rem 0.75rem; margin: 0; color: var(--muted); font-size: 0.9rem; }
.who strong { color: var(--fg); font-weight: 600; }

main { max-width: 1200px; margin: 0 auto; padding: 1.1rem 1.25rem 3rem; }
main.narrow { max-width: 30rem; padding-top: 3rem; }
.crumbs { font-size: 0.9rem; color: var(--muted); margin: 0 0 0.4rem; }
.crumbs a { color: var(--muted); }
.page-head { display: flex; flex-wrap: wrap; align-items: baseline; gap: 0.4rem 0.8rem; margin-bottom: 1rem; }
.page-head p { margin: 0; color: var(--muted); }

section.panel { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 1rem 1.1rem; margin: 0 0 1rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 24rem), 1fr)); gap: 0 1rem; }
.hint, .empty { color: var(--muted); font-size: 0.9rem; }
.notice { border-left: 4px solid var(--ok); background: var(--ok-bg); padding: 0.6rem 0.9rem; border-radius: 4px; }
.error { border-left: 4px solid var(--bad); background: var(--bad-bg); padding: 0.6rem 0.9rem; border-radius: 4px; }

dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 0.3rem 1.2rem; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }

.badge { display: inline-block; padding: 0.05rem 0.5rem; border-radius: 999px; font-size: 0.8rem; font-weight: 600;
  background: var(--soft); color: var(--muted); white-space: nowrap; vertical-align: 0.1em; }
.badge.ok { background: var(--ok-bg); color: var(--ok); }
.badge.run { background: var(--run-bg); color: var(--run); }
.badge.warn { background: var(--warn-bg); color: var(--warn); }
.badge.bad { background: var(--bad-bg); color: var(--bad); }

.counts { list-style: none; display: flex; flex-wrap: wrap; gap: 0.5rem; padding: 0; margin: 0 0 1rem; }
.counts a { display: flex; flex-direction: column; min-width: 7.2rem; padding: 0.45rem 0.8rem; border: 1px solid var(--line);
  border-radius: 8px; background: var(--panel); color: var(--fg); text-decoration: none; }
.counts a[aria-current="true"] { border-color: var(--accent); box-shadow: inset 0 0 0 1px var(--accent); }
.counts .n { font-size: 1.35rem; font-weight: 650; font-variant-numeric: tabular-nums; }
.counts .label { font-size: 0.85rem; color: var(--muted); }
.counts .stuck.alert .n { color: var(--warn); }

form.filters { display: flex; flex-wrap: wrap; align-items: flex-end; gap: 0.6rem 0.8rem; margin: 0 0 1rem; }
form.filters .field { display: flex; flex-direction: column; gap: 0.2rem; }
label { font-weight: 600; font-size: 0.9rem; }
input[type="text"], input[type="search"], input[type="password"], select, textarea {
  font: inherit; color: var(--fg); background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 0.4rem 0.55rem; max-width: 100%; }
input[type="text"], input[type="search"], input[type="password"], select { height: 2.35rem; }
main.narrow input[type="password"] { width: 100%; }
main.narrow .hint { margin-top: 1.2rem; }
.hint code, .nowrap { white-space: nowrap; }
textarea { width: 100%; resize: vertical; }
button, .button { font: inherit; font-weight: 600; cursor: pointer; border-radius: 6px; padding: 0.42rem 0.95rem;
  border: 1px solid var(--accent); background: var(--accent); color: var(--accent-fg); text-decoration: none; display: inline-block; }
button.quiet { background: transparent; color: var(--fg); border-color: var(--line); font-weight: 500; padding: 0.2rem 0.7rem; }
button.danger { background: var(--bad); border-color: var(--bad); color: #fff; }

table { width: 100%; border-collapse: collapse; font-size: 0.93rem; }
th, td { text-align: left; padding: 0.45rem 0.6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 0.8rem; color: var(--muted); font-weight: 600; text-transform: uppercase; letter-spacing: 0.04em; }
tbody tr:last-child td { border-bottom: 0; }
td.num { font-variant-numeric: tabular-nums; }
.pager { display: flex; gap: 1rem; margin-top: 0.8rem; }

.mutex { border-top: 1px solid var(--line); padding-top: 0.8rem; margin-top: 0.8rem; }
.mutex:first-of-type { border-top: 0; padding-top: 0; margin-top: 0; }
ul.plain, ol.queue { margin: 0; padding-left: 0; list-style: none; }
ul.plain li, ol.queue li { display: flex; flex-wrap: wrap; gap: 0.2rem 0.7rem; align-items: baseline; padding: 0.3rem 0; border-bottom: 1px dashed var(--line); }
ol.queue li { display: grid; grid-template-columns: 1.6rem 1fr; align-items: start; }
ol.queue .line { display: flex; flex-wrap: wrap; gap: 0.2rem 0.7rem; align-items: baseline; padding-top: 0.1rem; }
ul.plain li:last-child, ol.queue li:last-child { border-bottom: 0; }
ol.queue { counter-reset: q; }
ol.queue li::before { counter-increment: q; content: counter(q); min-width: 1.6rem; height: 1.6rem; border-radius: 50%;
  background: var(--soft); color: var(--muted); font-size: 0.8rem; font-weight: 700; display: inline-flex; align-items: center; justify-content: center; }
.meta { color: var(--muted); font-size: 0.9rem; }

.actions { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 22rem), 1fr)); gap: 1rem; align-items: start; }
form.action { display: flex; flex-direction: column; gap: 0.45rem; padding: 0.9rem; border: 1px solid var(--line); border-radius: 8px; }
form.action.danger { border-color: var(--bad); }
form.action h3 { margin: 0; }
form.action p { margin: 0; }
.check { display: flex; gap: 0.5rem; align-items: flex-start; }
.check input { margin-top: 0.3rem; width: 1.05rem; height: 1.05rem; flex: none; }
.check label { font-weight: 500; }
form.action button { align-self: flex-start; margin-top: 0.2rem; }

.log { max-height: 70vh; overflow: auto; background: var(--soft); border: 1px solid var(--line); border-radius: 6px; }
ol.log-lines { margin: 0; padding: 0.4rem 0; list-style: none; font-family: var(--mono); font-size: 0.84rem; line-height: 1.45; }
ol.log-lines li { display: flex; gap: 0.8rem; padding: 0 0.7rem; }
ol.log-lines .seq { color: var(--muted); min-width: 3ch; text-align: right; user-select: none; flex: none; }
ol.log-lines .text { white-space: pre-wrap; overflow-wrap: anywhere; }
ol.log-lines .src { color: var(--muted); flex: none; }
ol.log-lines li.stderr .text { color: var(--bad); }
ol.log-lines li.debug .text { color: var(--muted); font-style: italic; }
.log-status { margin: 0.5rem 0 0; }

@media (max-width: 640px) {
  body { font-size: 15px; }
  .top { padding: 0.5rem 0.9rem; }
  main { padding: 0.9rem 0.8rem 2.5rem; }
  section.panel { padding: 0.85rem 0.8rem; }
  table.cards thead { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
  table.cards, table.cards tbody, table.cards tr, table.cards td { display: block; width: 100%; }
  table.cards tr { border: 1px solid var(--line); border-radius: 8px; padding: 0.35rem 0.7rem; margin-bottom: 0.6rem; background: var(--panel); }
  table.cards td { border: 0; padding: 0.2rem 0; display: flex; gap: 0.8rem; justify-content: space-between; text-align: right; }
  table.cards td::before { content: attr(data-label); color: var(--muted); font-size: 0.85rem; text-align: left; flex: none; }
  table.cards td:first-child { font-weight: 600; text-align: left; }
  table.cards td:first-child::before { content: none; }
  .counts { display: grid; grid-template-columns: repeat(3, 1fr); }
  .counts a { min-width: 0; }
  table.cards td.none { display: none; }
  ol.log-lines .seq { display: none; }
}
`;

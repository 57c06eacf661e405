/**
 * Which client a sign-in attempt comes from, for slowing down repeated failures. On Cloudflare the edge sets
 * `CF-Connecting-IP` to the connecting address (a value the client sent is replaced). Locally nothing sets it (the
 * Worker listens on its own socket, without Miniflare's edge in front), so every client that sends none is one client,
 * `unknown` (and a local client can send its own value: on a control plane exposed beyond loopback without Cloudflare
 * in front, the slowdown is only as good as that header). An IPv6 address counts by its /64, the block one subscriber usually gets. Pure.
 */

/** The throttling key of a request's client: its IPv4 address, its IPv6 /64, or `unknown`. */
export function clientKey(connectingIp: string | null | undefined): string {
  const ip = (connectingIp ?? "").trim();
  if (/^\d{1,3}(?:\.\d{1,3}){3}$/.test(ip)) return ip;
  // An IPv4 client of a dual-stack listener.
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(ip);
  if (mapped) return mapped[1]!;
  const prefix = ipv6Prefix64(ip);
  return prefix ?? "unknown";
}

/** The first four groups of an IPv6 address (`2001:db8:0:1::/64`), or null when it is not one. */
function ipv6Prefix64(ip: string): string | null {
  if (!ip.includes(":") || !/^[0-9A-Fa-f:.]+$/.test(ip)) return null;
  const halves = ip.toLowerCase().split("::");
  if (halves.length > 2) return null;
  const head = halves[0] ? halves[0].split(":") : [];
  const tail = halves.length === 2 && halves[1] ? halves[1].split(":") : [];
  // An embedded IPv4 tail (::ffff:1.2.3.4) fills two groups.
  const groupsOf = (parts: string[]) => parts.reduce((n, part) => n + (part.includes(".") ? 2 : 1), 0);
  const missing = 8 - groupsOf(head) - groupsOf(tail);
  if (halves.length === 1 ? missing !== 0 : missing < 1) return null;
  const groups = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill("0"), ...tail];
  const first = groups.slice(0, 4);
  if (first.some((group) => !/^[0-9a-f]{1,4}$/.test(group))) return null;
  return `${first.map((group) => group.replace(/^0+(?=.)/, "")).join(":")}::/64`;
}

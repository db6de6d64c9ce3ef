/**
 * Every form in which a value could be logged, stored or sent, for leak
 * scans: hex (both cases), the text itself when it is printable, base64url,
 * and the characters of base64 (standard and URL-safe) that depend on the
 * value's bytes only, at each of the three alignments the value could have
 * inside a longer encoded buffer. Forms shorter than 16 characters are left
 * out: they would match by chance.
 */
export function valueForms(value: Buffer): string[] {
  const out = new Set<string>([value.toString("hex"), value.toString("hex").toUpperCase(), value.toString("base64url")]);
  if (/^[\x20-\x7e]+$/.test(value.toString("latin1"))) {
    out.add(value.toString("latin1"));
  }
  for (const shift of [0, 1, 2]) {
    const encoded = Buffer.concat([Buffer.alloc(shift), value, Buffer.alloc(3)]).toString("base64");
    const start = shift === 0 ? 0 : 4;
    const end = Math.floor((shift + value.length) / 3) * 4;
    const inner = encoded.slice(start, end);
    out.add(inner);
    out.add(inner.replace(/\+/g, "-").replace(/\//g, "_"));
  }
  return [...out].filter((form) => form.length >= 16);
}

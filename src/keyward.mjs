#!/usr/bin/env node
// The `keyward` command: runs the TypeScript sources through tsx, so the
// installed command and `npm start` execute the very same code.
import { register } from "tsx/esm/api";

register();
await import("./cli.ts");

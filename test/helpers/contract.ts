/**
 * The response half of the contract, checked in every integration test: each JSON answer must be one that its
 * route declares (shared/routes.ts, from which the OpenAPI document is generated), for that status, with no field
 * the schema does not name. Answers for no declared route (an unknown path, a wrong method) must be errors.
 */
import type { z } from "zod";
import { ApiErrorBody } from "../../shared/api.js";
import { findRoute, responseSchema } from "../../shared/routes.js";

/** Throws unless `body` is what the route of `method` `path` declares for `status`. */
export function expectDeclaredResponse(method: string, path: string, status: number, body: unknown): void {
  const route = findRoute(method, path);
  const where = `${method.toUpperCase()} ${path} → ${status}`;
  if (!route) {
    if (![401, 404, 405].includes(status)) throw new Error(`${where}: no route is declared for this request, yet it answered ${status}`);
    check(ApiErrorBody, body, where);
    return;
  }
  const schema = responseSchema(route, status);
  if (!schema) throw new Error(`${where}: the route ${route.name} does not declare a JSON answer with status ${status}: ${JSON.stringify(body).slice(0, 300)}`);
  check(schema, body, where);
}

function check(schema: z.ZodType, body: unknown, where: string): void {
  const parsed = schema.safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new Error(`${where}: the answer does not match its declared schema (${issue?.path.map(String).join(".") || "body"}: ${issue?.message}): ${JSON.stringify(body).slice(0, 300)}`);
  }
  const extra = undeclaredFields(parsed.data, body, "");
  if (extra.length > 0) throw new Error(`${where}: the answer has fields its schema does not declare: ${extra.join(", ")}`);
}

/** Paths of the fields of `input` that parsing dropped (zod objects strip what they do not declare). */
function undeclaredFields(output: unknown, input: unknown, at: string): string[] {
  if (Array.isArray(input) && Array.isArray(output)) return input.flatMap((item, i) => undeclaredFields(output[i], item, `${at}[${i}]`));
  if (isRecord(input) && isRecord(output)) {
    return Object.keys(input).flatMap((key) => (key in output ? undeclaredFields(output[key], input[key], at ? `${at}.${key}` : key) : [at ? `${at}.${key}` : key]));
  }
  return [];
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

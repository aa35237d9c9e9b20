// Errors a handler may throw. Each maps to an HTTP status and to the error
// body {"error":{"type","message"}} (WebSocket replies carry the same type,
// message and code).

export class LinkdError extends Error {
  /** HTTP-like status: 400, 401, 403, 404, 422, 500... */
  readonly status: number;
  /** Machine-readable type: "NOT_FOUND", "VALIDATION_ERROR"... */
  readonly type: string;
  /** Optional extra information, sent as JSON text in `details`. */
  readonly details?: unknown;

  constructor(status: number, type: string, message: string, details?: unknown) {
    super(message);
    this.name = new.target.name;
    this.status = status;
    this.type = type;
    this.details = details;
  }
}

export class BadRequestError extends LinkdError {
  constructor(message = "Bad request", details?: unknown) {
    super(400, "BAD_REQUEST", message, details);
  }
}

export class UnauthorizedError extends LinkdError {
  constructor(message = "Authentication required", details?: unknown) {
    super(401, "UNAUTHORIZED", message, details);
  }
}

export class ForbiddenError extends LinkdError {
  constructor(message = "Forbidden", details?: unknown) {
    super(403, "FORBIDDEN", message, details);
  }
}

export class NotFoundError extends LinkdError {
  constructor(message = "Not found", details?: unknown) {
    super(404, "NOT_FOUND", message, details);
  }
}

export class ConflictError extends LinkdError {
  constructor(message = "Conflict", details?: unknown) {
    super(409, "CONFLICT", message, details);
  }
}

export class ValidationError extends LinkdError {
  constructor(message = "Validation failed", details?: unknown) {
    super(422, "VALIDATION_ERROR", message, details);
  }
}

export class TimeoutError extends LinkdError {
  constructor(message = "Timed out", details?: unknown) {
    super(504, "TIMEOUT", message, details);
  }
}

export class ServiceUnavailableError extends LinkdError {
  constructor(message = "Not connected to linkd", details?: unknown) {
    super(503, "SERVICE_UNAVAILABLE", message, details);
  }
}

/** Any thrown value as a LinkdError; unknown errors become 500 INTERNAL_ERROR. */
export function toLinkdError(err: unknown): LinkdError {
  if (err instanceof LinkdError) return err;
  // duck typing: errors from another copy of the SDK, or hand-made ones
  const e = err as any;
  if (e && typeof e === "object" && typeof e.status === "number" && typeof e.type === "string") {
    return new LinkdError(e.status, e.type, String(e.message ?? e.type), e.details);
  }
  return new LinkdError(500, "INTERNAL_ERROR", "Internal error");
}

/** The protobuf ErrorResponse for an error. */
export function errorResponse(err: LinkdError): { code: number; type: string; message: string; details: string } {
  let details = "";
  if (err.details !== undefined) {
    try {
      details = JSON.stringify(err.details) ?? "";
    } catch {
      details = "";
    }
  }
  return { code: err.status, type: err.type, message: err.message, details };
}

// linkd-sdk: write Linkd services in TypeScript.
export { createService, Service, HttpReply, reply, consoleLogger, silentLogger, defaultSocketPath, DEFAULT_MAX_FRAME_BYTES } from "./service";
export type { HttpContext, ActionHandler } from "./service";
export { WebSocketApi, WsContext, WsGroup, Target } from "./ws";
export type { SocketInfo, RoomCount, MessageHandler, LifecycleHandler, Middleware, Next } from "./ws";
export {
  LinkdError,
  BadRequestError,
  UnauthorizedError,
  ForbiddenError,
  NotFoundError,
  ConflictError,
  ValidationError,
  TimeoutError,
  ServiceUnavailableError,
} from "./errors";
export type { AuthContext, Logger, ServiceOptions, WebSocketOptions, ActionOptions, HandlerOptions, Schema } from "./types";
export { FrameReader, MalformedFrameError, encodeFrame, decodeFrame } from "./proto";

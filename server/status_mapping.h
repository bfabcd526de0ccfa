// The one place where an absl::Status becomes a wire error: an HTTP status
// code with an OpenAI-style error body, or a gRPC status code. Both front
// ends call these so that the same failure reads the same on either API.
//
//   absl code                     HTTP  OpenAI type            gRPC
//   InvalidArgument               400   invalid_request_error  INVALID_ARGUMENT
//   OutOfRange                    400   invalid_request_error  OUT_OF_RANGE
//   FailedPrecondition            400   invalid_request_error  FAILED_PRECONDITION
//   Unauthenticated               401   invalid_request_error  UNAUTHENTICATED
//   PermissionDenied              403   permission_error       PERMISSION_DENIED
//   NotFound                      404   invalid_request_error  NOT_FOUND
//   AlreadyExists                 409   invalid_request_error  ALREADY_EXISTS
//   Aborted                       409   invalid_request_error  ABORTED
//   ResourceExhausted             429   rate_limit_error       RESOURCE_EXHAUSTED
//   Cancelled                     499   invalid_request_error  CANCELLED
//   Unimplemented                 501   server_error           UNIMPLEMENTED
//   Unavailable                   503   server_error           UNAVAILABLE
//   DeadlineExceeded              504   server_error           DEADLINE_EXCEEDED
//   Internal, Unknown, DataLoss   500   server_error           INTERNAL/UNKNOWN/DATA_LOSS
//
// 401 is typed invalid_request_error, as OpenAI's API types a bad key.
// 499 is the de-facto "client closed request" code; it is only ever logged
// and counted, since the client is gone. A status may carry the name of the
// offending request field (WithParam) which becomes the body's "param".
//
// Thread-safety: stateless functions.
#pragma once

#include <grpcpp/support/status_code_enum.h>

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace kvserve::server {

// HTTP status for `status` (200 for OK).
int HttpStatusFor(const absl::Status& status);

// OpenAI "type" of the error body; "" for OK.
std::string OpenAiErrorType(const absl::Status& status);

// gRPC status code for `status`.
grpc::StatusCode GrpcCodeFor(const absl::Status& status);

// Seconds a client should wait before retrying (the Retry-After header), for
// the transient failures: ResourceExhausted (queue full) and Unavailable
// (shutting down / not ready). nullopt otherwise.
std::optional<int> RetryAfterSecondsFor(const absl::Status& status);

// Attaches the name of the request field at fault (e.g. "temperature",
// "messages[2].content") to `status`, returned as the body's "param".
absl::Status WithParam(absl::Status status, std::string_view param);
// The field attached by WithParam, if any.
std::optional<std::string> ParamOf(const absl::Status& status);

// {"error": {"message", "type", "param", "code"}}. `param` defaults to
// ParamOf(status); `code` (an OpenAI error code such as "model_not_found")
// is null unless given. The message is the status message.
nlohmann::json OpenAiErrorBody(const absl::Status& status,
                               std::optional<std::string> param = std::nullopt,
                               std::optional<std::string> code = std::nullopt);

}  // namespace kvserve::server

#include "server/status_mapping.h"

#include "absl/strings/cord.h"

namespace kvserve::server {
namespace {

// Payload key under which WithParam stores the field name.
constexpr char kParamPayload[] = "type.kvserve.dev/openai-param";

}  // namespace

int HttpStatusFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted:
      return 409;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
      return 499;
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kDataLoss:
    default:
      return 500;
  }
}

std::string OpenAiErrorType(const absl::Status& status) {
  if (status.ok()) return "";
  const int http = HttpStatusFor(status);
  switch (http) {
    case 403:
      return "permission_error";
    case 429:
      return "rate_limit_error";
    default:
      return http >= 500 ? "server_error" : "invalid_request_error";
  }
}

grpc::StatusCode GrpcCodeFor(const absl::Status& status) {
  // The absl and gRPC canonical codes share names and numbers; spelled out
  // so that a mismatch would be a compile error rather than a silent cast.
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return grpc::StatusCode::OK;
    case absl::StatusCode::kCancelled:
      return grpc::StatusCode::CANCELLED;
    case absl::StatusCode::kUnknown:
      return grpc::StatusCode::UNKNOWN;
    case absl::StatusCode::kInvalidArgument:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case absl::StatusCode::kDeadlineExceeded:
      return grpc::StatusCode::DEADLINE_EXCEEDED;
    case absl::StatusCode::kNotFound:
      return grpc::StatusCode::NOT_FOUND;
    case absl::StatusCode::kAlreadyExists:
      return grpc::StatusCode::ALREADY_EXISTS;
    case absl::StatusCode::kPermissionDenied:
      return grpc::StatusCode::PERMISSION_DENIED;
    case absl::StatusCode::kResourceExhausted:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case absl::StatusCode::kFailedPrecondition:
      return grpc::StatusCode::FAILED_PRECONDITION;
    case absl::StatusCode::kAborted:
      return grpc::StatusCode::ABORTED;
    case absl::StatusCode::kOutOfRange:
      return grpc::StatusCode::OUT_OF_RANGE;
    case absl::StatusCode::kUnimplemented:
      return grpc::StatusCode::UNIMPLEMENTED;
    case absl::StatusCode::kInternal:
      return grpc::StatusCode::INTERNAL;
    case absl::StatusCode::kUnavailable:
      return grpc::StatusCode::UNAVAILABLE;
    case absl::StatusCode::kDataLoss:
      return grpc::StatusCode::DATA_LOSS;
    case absl::StatusCode::kUnauthenticated:
      return grpc::StatusCode::UNAUTHENTICATED;
    default:
      return grpc::StatusCode::UNKNOWN;
  }
}

std::optional<int> RetryAfterSecondsFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted:
      return 1;
    case absl::StatusCode::kUnavailable:
      return 5;
    default:
      return std::nullopt;
  }
}

absl::Status WithParam(absl::Status status, std::string_view param) {
  if (!status.ok()) status.SetPayload(kParamPayload, absl::Cord(std::string(param)));
  return status;
}

std::optional<std::string> ParamOf(const absl::Status& status) {
  auto p = status.GetPayload(kParamPayload);
  if (!p.has_value()) return std::nullopt;
  return std::string(*p);
}

nlohmann::json OpenAiErrorBody(const absl::Status& status, std::optional<std::string> param,
                               std::optional<std::string> code) {
  if (!param.has_value()) param = ParamOf(status);
  nlohmann::json error = {
      {"message", std::string(status.message())},
      {"type", OpenAiErrorType(status)},
      {"param", param.has_value() ? nlohmann::json(*param) : nlohmann::json(nullptr)},
      {"code", code.has_value() ? nlohmann::json(*code) : nlohmann::json(nullptr)},
  };
  return {{"error", std::move(error)}};
}

}  // namespace kvserve::server

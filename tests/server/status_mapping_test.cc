#include "server/status_mapping.h"

#include "gtest/gtest.h"

namespace kvserve::server {
namespace {

TEST(StatusMappingTest, EveryCanonicalCode) {
  struct Row {
    absl::StatusCode code;
    int http;
    const char* type;
    grpc::StatusCode grpc;
  } table[] = {
      {absl::StatusCode::kInvalidArgument, 400, "invalid_request_error",
       grpc::StatusCode::INVALID_ARGUMENT},
      {absl::StatusCode::kOutOfRange, 400, "invalid_request_error", grpc::StatusCode::OUT_OF_RANGE},
      {absl::StatusCode::kFailedPrecondition, 400, "invalid_request_error",
       grpc::StatusCode::FAILED_PRECONDITION},
      {absl::StatusCode::kUnauthenticated, 401, "invalid_request_error",
       grpc::StatusCode::UNAUTHENTICATED},
      {absl::StatusCode::kPermissionDenied, 403, "permission_error",
       grpc::StatusCode::PERMISSION_DENIED},
      {absl::StatusCode::kNotFound, 404, "invalid_request_error", grpc::StatusCode::NOT_FOUND},
      {absl::StatusCode::kAlreadyExists, 409, "invalid_request_error",
       grpc::StatusCode::ALREADY_EXISTS},
      {absl::StatusCode::kAborted, 409, "invalid_request_error", grpc::StatusCode::ABORTED},
      {absl::StatusCode::kResourceExhausted, 429, "rate_limit_error",
       grpc::StatusCode::RESOURCE_EXHAUSTED},
      {absl::StatusCode::kCancelled, 499, "invalid_request_error", grpc::StatusCode::CANCELLED},
      {absl::StatusCode::kUnimplemented, 501, "server_error", grpc::StatusCode::UNIMPLEMENTED},
      {absl::StatusCode::kUnavailable, 503, "server_error", grpc::StatusCode::UNAVAILABLE},
      {absl::StatusCode::kDeadlineExceeded, 504, "server_error",
       grpc::StatusCode::DEADLINE_EXCEEDED},
      {absl::StatusCode::kInternal, 500, "server_error", grpc::StatusCode::INTERNAL},
      {absl::StatusCode::kUnknown, 500, "server_error", grpc::StatusCode::UNKNOWN},
      {absl::StatusCode::kDataLoss, 500, "server_error", grpc::StatusCode::DATA_LOSS},
  };
  for (const Row& r : table) {
    const absl::Status s(r.code, "boom");
    EXPECT_EQ(HttpStatusFor(s), r.http) << s;
    EXPECT_EQ(OpenAiErrorType(s), r.type) << s;
    EXPECT_EQ(GrpcCodeFor(s), r.grpc) << s;
  }
  EXPECT_EQ(HttpStatusFor(absl::OkStatus()), 200);
  EXPECT_EQ(OpenAiErrorType(absl::OkStatus()), "");
  EXPECT_EQ(GrpcCodeFor(absl::OkStatus()), grpc::StatusCode::OK);
}

TEST(StatusMappingTest, RetryAfterOnlyForTransientFailures) {
  EXPECT_EQ(RetryAfterSecondsFor(absl::ResourceExhaustedError("full")), 1);
  EXPECT_EQ(RetryAfterSecondsFor(absl::UnavailableError("down")), 5);
  EXPECT_FALSE(RetryAfterSecondsFor(absl::InvalidArgumentError("x")).has_value());
  EXPECT_FALSE(RetryAfterSecondsFor(absl::InternalError("x")).has_value());
  EXPECT_FALSE(RetryAfterSecondsFor(absl::OkStatus()).has_value());
}

TEST(StatusMappingTest, ATenantsFullQueueIs429WithRetryAfter) {
  // What the engine's Submit returns when one tenant's queue is full: the
  // same answer as the server's own queue, with the message naming the
  // tenant passed through.
  const absl::Status s =
      absl::ResourceExhaustedError("tenant 'acme' has 32 requests queued (max_queued); retry later");
  EXPECT_EQ(HttpStatusFor(s), 429);
  EXPECT_EQ(RetryAfterSecondsFor(s), 1);
  EXPECT_EQ(GrpcCodeFor(s), grpc::StatusCode::RESOURCE_EXHAUSTED);
  const nlohmann::json body = OpenAiErrorBody(s);
  EXPECT_EQ(body["error"]["type"], "rate_limit_error");
  EXPECT_EQ(body["error"]["message"], std::string(s.message()));
}

TEST(StatusMappingTest, ABadKeyReadsAsOpenAisInvalidApiKey) {
  const nlohmann::json body =
      OpenAiErrorBody(absl::UnauthenticatedError("invalid API key"), std::nullopt, "invalid_api_key");
  EXPECT_EQ(body, nlohmann::json::parse(R"({"error": {"message": "invalid API key",
      "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})"));
}

TEST(StatusMappingTest, ErrorBodyCarriesMessageTypeParamAndCode) {
  const absl::Status s = WithParam(absl::InvalidArgumentError("'n' must be between 1 and 8"), "n");
  EXPECT_EQ(ParamOf(s), "n");
  nlohmann::json body = OpenAiErrorBody(s);
  ASSERT_TRUE(body.contains("error"));
  const nlohmann::json& e = body["error"];
  EXPECT_EQ(e["message"], "'n' must be between 1 and 8");
  EXPECT_EQ(e["type"], "invalid_request_error");
  EXPECT_EQ(e["param"], "n");
  EXPECT_TRUE(e["code"].is_null());
  EXPECT_EQ(body.size(), 1u);
  EXPECT_EQ(e.size(), 4u);

  // Explicit param and code win; without either both are null.
  body = OpenAiErrorBody(s, "other", "model_not_found");
  EXPECT_EQ(body["error"]["param"], "other");
  EXPECT_EQ(body["error"]["code"], "model_not_found");
  body = OpenAiErrorBody(absl::InternalError("x"));
  EXPECT_TRUE(body["error"]["param"].is_null());
  EXPECT_TRUE(body["error"]["code"].is_null());
  EXPECT_EQ(body["error"]["type"], "server_error");
}

TEST(StatusMappingTest, WithParamKeepsCodeAndMessageAndIgnoresOk) {
  const absl::Status s = WithParam(absl::NotFoundError("no model"), "model");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "no model");
  EXPECT_TRUE(WithParam(absl::OkStatus(), "x").ok());
  EXPECT_FALSE(ParamOf(absl::OkStatus()).has_value());
  EXPECT_FALSE(ParamOf(absl::InternalError("x")).has_value());
}

}  // namespace
}  // namespace kvserve::server

// The gRPC front end in process, over a real channel, on a tiny random model:
// the wire results equal what the engine computes, errors carry the
// documented codes, and calls that end early (client cancel, deadline,
// server shutdown) give their KV blocks back.
#include "server/grpc_server.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <future>
#include <thread>

#include "engine/model/llama_model.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "kvserve/v1/inference.grpc.pb.h"
#include "server/tenant_registry.h"
#include "tests/engine/model/tiny_serving_model.h"
#include "tests/support/temp_dir.h"

namespace kvserve::server {
namespace {

constexpr int kContext = 4096;

// The model is shared by the suite: writing and loading it once keeps the
// tests quick. Big enough that a few thousand tokens take far longer than
// the short deadlines and cancels below.
class GrpcServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tiny = testing::LoadTinyServingModel("grpc_server_tiny", kContext);
    ASSERT_TRUE(tiny.ok()) << tiny.status();
    model_ = tiny->model.release();
    tokenizer_ = tiny->tokenizer.release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete model_;
  }

  void SetUp() override {
    engine::EngineConfig c;
    c.kv_cache_bytes = 64ull << 20;
    c.max_context = kContext;
    c.check_invariants = true;
    auto e = engine::Engine::Create(c, model_, tokenizer_);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
    auto s = GrpcServer::Start({"127.0.0.1:0", "tiny"}, engine_.get(), tokenizer_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    ASSERT_GT(server_->port(), 0);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::Inference::NewStub(channel_);
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
    if (engine_ != nullptr) engine_->Shutdown();
  }

  static v1::GenerateRequest Greedy(int prompt_len, int max_tokens) {
    v1::GenerateRequest r;
    r.set_model("tiny");
    for (int i = 0; i < prompt_len; ++i) r.mutable_prompt_tokens()->add_ids(3 + (i * 7) % 60);
    r.set_max_tokens(max_tokens);
    r.set_temperature(0);
    r.set_ignore_eos(true);
    return r;
  }

  grpc::Status Complete(const v1::GenerateRequest& r, v1::CompleteResponse* out) {
    grpc::ClientContext ctx;
    return stub_->Complete(&ctx, r, out);
  }

  // Waits (bounded) until the engine holds no sequence and no KV block.
  bool EngineDrains() {
    for (int i = 0; i < 1000; ++i) {
      engine::EngineStats s = engine_->Stats();
      if (s.running == 0 && s.waiting == 0 && s.kv_blocks_used == 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  // grpc.health.v1.Health/Check by hand: the request is field 1 (service
  // name, length-delimited); the response's field 1 is the status enum
  // (1 = SERVING, 2 = NOT_SERVING).
  grpc::Status HealthCheck(const std::string& service, int* serving_status) {
    std::string req;
    req.push_back(0x0a);
    req.push_back(static_cast<char>(service.size()));
    req += service;
    grpc::Slice slice(req);
    grpc::ByteBuffer request(&slice, 1), response;
    grpc::GenericStub generic(channel_);
    grpc::ClientContext ctx;
    std::promise<grpc::Status> done;
    generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                      &response, [&](grpc::Status s) { done.set_value(s); });
    grpc::Status status = done.get_future().get();
    if (!status.ok()) return status;
    std::vector<grpc::Slice> slices;
    EXPECT_TRUE(response.Dump(&slices).ok());
    std::string bytes;
    for (const grpc::Slice& s : slices)
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    *serving_status = bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : 0;  // 0: UNKNOWN (omitted)
    return status;
  }

  static model::LlamaModel* model_;
  static tokenizer::Tokenizer* tokenizer_;
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<GrpcServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};

model::LlamaModel* GrpcServerTest::model_ = nullptr;
tokenizer::Tokenizer* GrpcServerTest::tokenizer_ = nullptr;

TEST_F(GrpcServerTest, ListModelsNamesTheModelAndItsLimits) {
  grpc::ClientContext ctx;
  v1::ListModelsResponse r;
  ASSERT_TRUE(stub_->ListModels(&ctx, v1::ListModelsRequest(), &r).ok());
  ASSERT_EQ(r.models_size(), 1);
  EXPECT_EQ(r.models(0).name(), "tiny");
  EXPECT_EQ(r.models(0).max_context(), kContext);
  EXPECT_EQ(r.models(0).vocab_size(), 64);
}

TEST_F(GrpcServerTest, CompleteIsDeterministicAndEqualsTheStream) {
  const v1::GenerateRequest req = Greedy(10, 24);
  v1::CompleteResponse a, b;
  ASSERT_TRUE(Complete(req, &a).ok());
  ASSERT_TRUE(Complete(req, &b).ok());
  ASSERT_EQ(a.choices_size(), 1);
  EXPECT_EQ(a.model(), "tiny");
  EXPECT_EQ(a.choices(0).token_ids_size(), 24);
  EXPECT_EQ(a.choices(0).finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(a.usage().prompt_tokens(), 10);
  EXPECT_EQ(a.usage().completion_tokens(), 24);
  EXPECT_EQ(a.choices(0).text(), b.choices(0).text());
  EXPECT_EQ(std::vector<int32_t>(a.choices(0).token_ids().begin(), a.choices(0).token_ids().end()),
            std::vector<int32_t>(b.choices(0).token_ids().begin(), b.choices(0).token_ids().end()));
  EXPECT_NE(a.request_id(), b.request_id());

  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, req);
  v1::GenerateResponse msg;
  std::string text;
  std::vector<int32_t> ids;
  int finals = 0;
  while (reader->Read(&msg)) {
    EXPECT_EQ(msg.index(), 0);
    text += msg.text();
    ids.insert(ids.end(), msg.token_ids().begin(), msg.token_ids().end());
    if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      ++finals;
      EXPECT_EQ(msg.finish_reason(), v1::FINISH_REASON_LENGTH);
      EXPECT_EQ(msg.usage().prompt_tokens(), 10);
      EXPECT_EQ(msg.usage().completion_tokens(), 24);
    }
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(finals, 1);
  EXPECT_EQ(text, a.choices(0).text());
  EXPECT_EQ(ids,
            std::vector<int32_t>(a.choices(0).token_ids().begin(), a.choices(0).token_ids().end()));
}

TEST_F(GrpcServerTest, SeveralChoicesAndLogprobs) {
  v1::GenerateRequest req = Greedy(6, 8);
  req.set_temperature(1.0f);
  req.set_seed(7);
  req.set_n(3);
  req.set_logprobs(2);
  req.set_prompt_logprobs(true);
  v1::CompleteResponse r;
  ASSERT_TRUE(Complete(req, &r).ok());
  ASSERT_EQ(r.choices_size(), 3);
  for (int i = 0; i < 3; ++i) {
    const v1::Choice& c = r.choices(i);
    EXPECT_EQ(c.index(), i);
    ASSERT_EQ(c.logprobs_size(), c.token_ids_size());
    for (int k = 0; k < c.logprobs_size(); ++k) {
      const v1::TokenLogprob& lp = c.logprobs(k);
      EXPECT_EQ(lp.token_id(), c.token_ids(k));
      EXPECT_EQ(lp.token(), tokenizer_->TokenToPiece(lp.token_id()));
      EXPECT_LE(lp.logprob(), 0.0f);
      ASSERT_EQ(lp.top_logprobs_size(), 2);
      EXPECT_GE(lp.top_logprobs(0).logprob(), lp.top_logprobs(1).logprob());
      EXPECT_GE(lp.top_logprobs(0).logprob(), lp.logprob());
      EXPECT_EQ(lp.top_logprobs(0).token(),
                tokenizer_->TokenToPiece(lp.top_logprobs(0).token_id()));
    }
  }
  EXPECT_EQ(r.usage().prompt_tokens(), 6);
  EXPECT_EQ(r.usage().completion_tokens(), 3 * 8);
  EXPECT_EQ(r.prompt_logprobs_size(), 5);
  // Same seed, same choices.
  v1::CompleteResponse again;
  ASSERT_TRUE(Complete(req, &again).ok());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(again.choices(i).text(), r.choices(i).text());
}

TEST_F(GrpcServerTest, BadRequestsGetTheirCodes) {
  v1::CompleteResponse r;
  v1::GenerateRequest req = Greedy(4, 4);
  req.set_model("gpt-17");
  EXPECT_EQ(Complete(req, &r).error_code(), grpc::StatusCode::NOT_FOUND);

  req = Greedy(4, 4);
  req.set_max_tokens(0);
  EXPECT_EQ(Complete(req, &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  req = Greedy(4, 4);
  req.clear_prompt_tokens();
  grpc::Status s = Complete(req, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("prompt"), std::string::npos) << s.error_message();

  req = Greedy(kContext, 1);  // one token over the context
  EXPECT_EQ(Complete(req, &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  req = Greedy(4, 4);
  req.mutable_prompt_tokens()->add_ids(64);  // outside the vocabulary
  EXPECT_EQ(Complete(req, &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  for (auto mutate : std::vector<void (*)(v1::GenerateRequest*)>{
           [](v1::GenerateRequest* q) { q->set_temperature(-1); },
           [](v1::GenerateRequest* q) { q->set_top_p(0); },
           [](v1::GenerateRequest* q) { q->set_top_k(-2); },
           [](v1::GenerateRequest* q) { q->set_min_p(1.5f); },
           [](v1::GenerateRequest* q) { q->set_presence_penalty(3); },
           [](v1::GenerateRequest* q) { q->set_repetition_penalty(0); },
           [](v1::GenerateRequest* q) { q->set_n(0); },
           [](v1::GenerateRequest* q) { q->set_n(1000); },
           [](v1::GenerateRequest* q) { q->set_logprobs(-1); },
           [](v1::GenerateRequest* q) { q->set_logprobs(1000); },
           [](v1::GenerateRequest* q) { q->add_stop(""); },
       }) {
    req = Greedy(4, 4);
    mutate(&req);
    s = Complete(req, &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << req.DebugString();
  }

  // The tiny model has no chat template: the server cannot serve chats.
  req = Greedy(4, 4);
  v1::ChatMessage* m = req.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("hi");
  EXPECT_EQ(Complete(req, &r).error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  // Errors in a stream arrive as its status, before any message.
  req = Greedy(4, 4);
  req.set_model("gpt-17");
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, req);
  v1::GenerateResponse msg;
  EXPECT_FALSE(reader->Read(&msg));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(EngineDrains());
}

TEST_F(GrpcServerTest, EmptyModelNameAndTextPromptAreAccepted) {
  v1::GenerateRequest req;
  req.set_prompt("ABC");  // the tiny vocabulary has byte tokens for these
  req.set_max_tokens(3);
  req.set_temperature(0);
  req.set_ignore_eos(true);
  v1::CompleteResponse r;
  grpc::Status s = Complete(req, &r);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(r.usage().prompt_tokens(),
            static_cast<int>(tokenizer_->Encode("ABC", tokenizer_->add_bos(), false).size()));
  EXPECT_EQ(r.choices(0).token_ids_size(), 3);
}

TEST_F(GrpcServerTest, ClientCancelFreesTheBlocks) {
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, Greedy(16, kContext - 16));
  v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  ctx.TryCancel();
  while (reader->Read(&msg)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(EngineDrains());
  // And the server still serves.
  v1::CompleteResponse r;
  EXPECT_TRUE(Complete(Greedy(4, 2), &r).ok());
}

TEST_F(GrpcServerTest, DeadlineEndsTheCallAndFreesTheBlocks) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
  v1::CompleteResponse r;
  EXPECT_EQ(stub_->Complete(&ctx, Greedy(16, kContext - 16), &r).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(EngineDrains());
  EXPECT_TRUE(Complete(Greedy(4, 2), &r).ok());
}

TEST_F(GrpcServerTest, HealthIsServingForTheServerAndTheService) {
  int status = 0;
  ASSERT_TRUE(HealthCheck("", &status).ok());
  // The service turns SERVING once the engine reports ready.
  for (int i = 0; i < 500; ++i) {
    ASSERT_TRUE(HealthCheck("kvserve.v1.Inference", &status).ok());
    if (status == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(status, 1);
  ASSERT_TRUE(HealthCheck("", &status).ok());
  EXPECT_EQ(status, 1);
  EXPECT_EQ(HealthCheck("no.such.Service", &status).error_code(), grpc::StatusCode::NOT_FOUND);
}

// The fixture's server replaced by one that takes the keys of tenants
// "acme" (key-a) and "beta" (key-b).
TEST_F(GrpcServerTest, WithTenantsEveryInferenceMethodNeedsAKey) {
  server_->Shutdown();
  const std::string path = kvserve::testing::ProcessTempDir() + "/grpc_server_test_tenants.json";
  std::ofstream(path, std::ios::trunc)
      << R"({"tenants": [{"id": "acme", "api_keys": [")"
      << config::FormatKeyHash(config::HashApiKey("key-a"))
      << R"("]}, {"id": "beta", "api_keys": [")"
      << config::FormatKeyHash(config::HashApiKey("key-b")) << R"("]}]})";
  auto tenants = TenantRegistry::Load(path, engine_.get());
  ASSERT_TRUE(tenants.ok()) << tenants.status();
  GrpcServerOptions options{"127.0.0.1:0", "tiny"};
  options.tenants = tenants->get();
  auto s = GrpcServer::Start(options, engine_.get(), tokenizer_);
  ASSERT_TRUE(s.ok()) << s.status();
  server_ = std::move(*s);
  channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                                 grpc::InsecureChannelCredentials());
  stub_ = v1::Inference::NewStub(channel_);

  // Each method with `metadata` ({key, value} pairs): its status.
  auto list_models = [&](const std::vector<std::pair<std::string, std::string>>& metadata) {
    grpc::ClientContext ctx;
    for (const auto& [k, v] : metadata) ctx.AddMetadata(k, v);
    v1::ListModelsResponse r;
    return stub_->ListModels(&ctx, v1::ListModelsRequest(), &r);
  };
  auto complete = [&](const std::vector<std::pair<std::string, std::string>>& metadata) {
    grpc::ClientContext ctx;
    for (const auto& [k, v] : metadata) ctx.AddMetadata(k, v);
    v1::CompleteResponse r;
    return stub_->Complete(&ctx, Greedy(4, 2), &r);
  };
  auto generate = [&](const std::vector<std::pair<std::string, std::string>>& metadata) {
    grpc::ClientContext ctx;
    for (const auto& [k, v] : metadata) ctx.AddMetadata(k, v);
    auto reader = stub_->Generate(&ctx, Greedy(4, 2));
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
    }
    return reader->Finish();
  };
  using Call = std::function<grpc::Status(const std::vector<std::pair<std::string, std::string>>&)>;
  const std::vector<std::pair<const char*, Call>> methods = {
      {"ListModels", list_models}, {"Complete", complete}, {"Generate", generate}};
  for (const auto& [name, call] : methods) {
    for (const auto& bad : std::vector<std::vector<std::pair<std::string, std::string>>>{
             {},
             {{"authorization", "Bearer wrong"}},
             {{"authorization", "key-a"}},
             {{"authorization", "Bearer key-a"}, {"authorization", "Bearer key-b"}}}) {
      const grpc::Status st = call(bad);
      EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << name;
    }
    for (const char* key : {"key-a", "key-b"}) {
      const grpc::Status st = call({{"authorization", std::string("Bearer ") + key}});
      EXPECT_TRUE(st.ok()) << name << " " << key << ": " << st.error_message();
    }
  }
  // Health stays open for probes.
  int status = 0;
  EXPECT_TRUE(HealthCheck("", &status).ok());

  // Complete and Generate with key-b were both charged to beta, key-a's to
  // acme; nothing went to the default tenant.
  auto submitted = [&](const std::string& id) {
    for (const engine::TenantStats& t : engine_->Stats().tenants) {
      if (t.id == id) return t.requests_submitted;
    }
    return int64_t{-1};
  };
  for (int i = 0; i < 1000 && (submitted("acme") != 2 || submitted("beta") != 2); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(submitted("acme"), 2);
  EXPECT_EQ(submitted("beta"), 2);
  EXPECT_EQ(submitted(""), -1);
  server_->Shutdown();  // before the registry it points to goes
  std::remove(path.c_str());
}

TEST_F(GrpcServerTest, ShutdownEndsStreamsInFlight) {
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, Greedy(16, kContext - 16));
  v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  server_->Shutdown();
  server_->Shutdown();  // idempotent
  while (reader->Read(&msg)) {
  }
  grpc::Status s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_TRUE(EngineDrains());
  v1::CompleteResponse r;
  EXPECT_EQ(Complete(Greedy(4, 2), &r).error_code(), grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace kvserve::server

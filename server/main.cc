// kvserve: the command-line entry point.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "server/commands.h"

namespace {

constexpr char kUsage[] =
    "usage: kvserve <command> [flags]\n"
    "\n"
    "commands:\n"
    "  generate     generate a continuation of a prompt (optionally in chat format)\n"
    "  perplexity   measure perplexity of a text file\n"
    "  bench        time prefill and batched decode on random tokens\n"
    "  serve        run the HTTP server\n"
    "  hash-key     print the hash of an API key for the tenants file\n"
    "\n"
    "Run 'kvserve <command> --help' for the flags of a command.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (cmd == "generate") return kvserve::server::RunGenerate(args);
  if (cmd == "perplexity") return kvserve::server::RunPerplexity(args);
  if (cmd == "bench") return kvserve::server::RunBench(args);
  if (cmd == "serve") return kvserve::server::RunServe(args);
  if (cmd == "hash-key") return kvserve::server::RunHashKey(args);
  std::fprintf(stderr, "kvserve: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
  return 2;
}

// The kvserve subcommands. Each takes the arguments after its name and
// returns the process exit code (0 ok, 1 runtime failure, 2 usage error).
#pragma once

#include <string>
#include <vector>

namespace kvserve::server {

int RunGenerate(const std::vector<std::string>& args);
int RunPerplexity(const std::vector<std::string>& args);
int RunBench(const std::vector<std::string>& args);
int RunServe(const std::vector<std::string>& args);
int RunHashKey(const std::vector<std::string>& args);

}  // namespace kvserve::server

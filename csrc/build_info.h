// What this binary was built with, for reports and bug tickets.
#pragma once
#include <string>

namespace lrk {

struct BuildInfo {
  std::string version;     // kernel version; latency caches are keyed by it
  std::string compiler;
  std::string build_type;
  std::string arch;        // CMAKE_SYSTEM_PROCESSOR of the target
};

const BuildInfo& build_info();

// One JSON object with the build info and the detected CPU features.
std::string report_json();

}  // namespace lrk

// Prints the build info and detected CPU features as JSON; runs on a device without Python.
#include <cstdio>

#include "build_info.h"

int main() {
  std::printf("%s\n", lrk::report_json().c_str());
  return 0;
}

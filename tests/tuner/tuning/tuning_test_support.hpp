#pragma once
// Shared by the tuning tests: a fresh directory per test case, removed when the case ends.

#include "../../support/temp_dir.hpp"

namespace nsa::tuning_test {

using nsa::test::TempDir;

}  // namespace nsa::tuning_test

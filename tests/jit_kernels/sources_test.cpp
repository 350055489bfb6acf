// The embedded source table against the files in the repository, and the source hash.

#include "nsa/jit/sources.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "nsa/jit/device.hpp"

using namespace nsa::jit;
namespace fs = std::filesystem;

namespace {

std::map<std::string, std::string> kernel_files_on_disk() {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::directory_iterator(fs::path(NSA_SOURCE_DIR) / "jit_kernels" / "kernels")) {
    const auto ext = e.path().extension();
    if (ext != ".cu" && ext != ".cuh") continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    files[e.path().filename().string()] = text.str();
  }
  return files;
}

}  // namespace

TEST(EmbeddedSources, TableHoldsEveryKernelFileVerbatim) {
  const auto disk = kernel_files_on_disk();
  ASSERT_FALSE(disk.empty());
  std::map<std::string, std::string> embedded;
  for (const auto& s : embedded_sources()) embedded[std::string(s.name)] = std::string(s.text);
  EXPECT_EQ(embedded.size(), disk.size());
  for (const auto& [name, text] : disk) {
    auto found = find_source(name);
    ASSERT_TRUE(found) << name << " is not embedded: rebuild so the table is regenerated";
    // Not EXPECT_EQ: a stale table would print two whole kernel files.
    EXPECT_TRUE(*found == text) << name << " differs from the file on disk (" << found->size() << " vs " << text.size()
                                << " bytes): the build did not regenerate the table";
  }
  EXPECT_TRUE(find_source("selection_params.cuh"));
  EXPECT_FALSE(find_source("no_such_kernel.cu"));
}

TEST(EmbeddedSources, TableIsSortedByName) {
  auto all = embedded_sources();
  for (std::size_t i = 1; i < all.size(); ++i) EXPECT_LT(all[i - 1].name, all[i].name);
}

TEST(EmbeddedSources, HashIsStableAndIsFnv1aOfNamesAndTexts) {
  // Recomputed here from the files on disk, independently of the library.
  std::uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&](const std::string& s) {
    for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
    h = (h ^ 0) * 0x100000001b3ull;
  };
  for (const auto& [name, text] : kernel_files_on_disk()) {
    mix(name);
    mix(text);
  }
  char expected[17];
  std::snprintf(expected, sizeof expected, "%016llx", static_cast<unsigned long long>(h));
  EXPECT_EQ(kernel_source_hash(), expected) << "the embedded sources are not the files on disk";
  EXPECT_EQ(kernel_source_hash(), kernel_source_hash());
  EXPECT_EQ(kernel_source_hash().size(), 16u);
}

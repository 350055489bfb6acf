#pragma once
// Shared by the tuning tests: a fresh directory per test case, removed when the case ends.

#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <string>

namespace nsa::tuning_test {

class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "nsa-tuning-test";
    for (auto& c : name)
      if (c == '/') c = '_';
    std::random_device rd;
    m_path = std::filesystem::temp_directory_path() / ("nsa-" + name + "-" + std::to_string(rd()));
    std::filesystem::create_directories(m_path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(m_path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return m_path; }

 private:
  std::filesystem::path m_path;
};

}  // namespace nsa::tuning_test

#pragma once
// A fresh directory per test case, removed with everything in it when the case ends. Shared by
// every test folder (tests/<folder>/*_support.hpp re-export it), so there is one definition.

#include <stdlib.h>

#include <filesystem>
#include <stdexcept>
#include <string>

namespace nsa::test {

/// A directory under $TMPDIR made for one test and removed after it. The name is short
/// ("nsa-XXXXXX") so that socket paths inside it fit a sockaddr_un. A test that takes away the
/// directory's own permissions still gets it removed: the destructor gives them back first.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "nsa-XXXXXX").string();
    if (!mkdtemp(pattern.data()))
      throw std::runtime_error("mkdtemp failed for " + pattern + ": is $TMPDIR writable?");
    m_path = pattern;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(m_path, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(m_path, ec);
  }
  const std::filesystem::path& path() const { return m_path; }
  std::filesystem::path operator/(const std::string& name) const { return m_path / name; }

 private:
  std::filesystem::path m_path;
};

}  // namespace nsa::test

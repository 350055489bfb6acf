// Admin ops are checked against the peer's kernel credentials (SO_PEERCRED, SO_PEERGROUPS):
// a client of another uid is forbidden unless it is in the admin group. Needs root to run a
// client as another user; skipped otherwise with a message.

#include <gtest/gtest.h>

#include <grp.h>
#include <pwd.h>

#include "service_test_support.hpp"

namespace nsa::service::testing {
namespace {

constexpr uid_t kNobody = 65534;
constexpr gid_t kNogroup = 65534;

/// Runs nsa-tunectl as uid/gid nobody with the given supplementary groups.
ProcessResult tunectl_as_nobody(const Daemon& d, std::vector<gid_t> groups, std::vector<std::string> args) {
  std::vector<std::string> argv{tunectl_binary().string(), "--socket", d.socket().string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_process(argv, {}, 20s, [groups] {
    if (::setgroups(groups.size(), groups.data()) != 0 || ::setgid(kNogroup) != 0 || ::setuid(kNobody) != 0)
      ::_exit(126);
  });
}

class AdminTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a client as another uid (nobody); skipped";
    // nobody must reach the socket: the temp dir is 0700 by mkdtemp, and the socket is 0660
    // for the daemon's user and group, which nobody is not in. Open both for this test only.
    fs::permissions(dir.path(), fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
  }
  void open_socket(const Daemon& d) {
    struct stat st {};
    ASSERT_EQ(::stat(d.socket().c_str(), &st), 0);
    ASSERT_EQ(st.st_mode & 0777, 0660u) << "the daemon creates its socket 0660";
    fs::permissions(d.socket(), fs::perms::all);
  }
  TempDir dir;
};

TEST_F(AdminTest, AnAdminOpFromAnotherUidIsForbiddenButReadsAreAllowed) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  open_socket(d);
  ProcessResult pin = tunectl_as_nobody(d, {}, {"pin", "sm_80", "--reason", "not mine to pin"});
  ASSERT_NE(pin.code, 126) << "could not become nobody";
  EXPECT_EQ(pin.code, 1) << pin.out << pin.err;
  EXPECT_NE(pin.err.find("forbidden"), std::string::npos) << pin.err;
  EXPECT_NE(pin.err.find("uid 65534"), std::string::npos) << pin.err;
  ProcessResult unpin = tunectl_as_nobody(d, {}, {"unpin", "sm_89"});
  EXPECT_NE(unpin.err.find("forbidden"), std::string::npos) << unpin.err;
  ProcessResult pins = tunectl_as_nobody(d, {}, {"pins"});
  EXPECT_EQ(pins.code, 0) << pins.err;
  EXPECT_NE(pins.out.find("sm_89"), std::string::npos);
  EXPECT_EQ(pins.out.find("sm_80"), std::string::npos) << "the forbidden pin was not made";
}

TEST_F(AdminTest, MembersOfTheAdminGroupMayPinThroughTheirSupplementaryGroups) {
  // Any existing group other than nobody's own will do; "daemon" (gid 1) exists on Debian.
  group* g = ::getgrnam("daemon");
  if (!g) GTEST_SKIP() << "no group named daemon on this host";
  const gid_t admin_gid = g->gr_gid;
  Daemon d(dir.path(), {"--admin-group", "daemon"});
  ASSERT_TRUE(d.start());
  open_socket(d);
  ProcessResult member = tunectl_as_nobody(d, {admin_gid}, {"pin", "sm_80", "--reason", "admin group member"});
  EXPECT_EQ(member.code, 0) << member.err;
  EXPECT_NE(member.out.find("pinned sm_80"), std::string::npos);
  ProcessResult outsider = tunectl_as_nobody(d, {}, {"unpin", "sm_80"});
  EXPECT_EQ(outsider.code, 1);
  EXPECT_NE(outsider.err.find("members of group daemon"), std::string::npos) << outsider.err;
}

}  // namespace
}  // namespace nsa::service::testing

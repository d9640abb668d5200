package hba

import (
	"net/netip"
	"strings"
	"testing"
)

const file = `
# TYPE     DATABASE     USER        ADDRESS            METHOD
local      all          postgres                       trust
local      all          all                            md5
hostssl    app,reports  "alice"     10.0.0.0/8         cert
hostnossl  all          all         0.0.0.0/0          reject
host       sameuser     all         127.0.0.1/32       trust
host       app          bob,carol   192.168.1.7 255.255.255.0  md5
host       all          all         ::1/128            scram-sha-256
host       all          all         all                password
`

func TestMethod(t *testing.T) {
	rs, err := Parse(strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		db, user, addr string
		tls            bool
		want           string
		line           int
	}{
		{"app", "alice", "10.1.2.3", true, "cert", 5},
		{"app", "alice", "10.1.2.3", false, "reject", 6}, // hostnossl
		{"app", "dave", "10.1.2.3", true, "scram-sha-256", 10},
		{"dave", "dave", "127.0.0.1", true, "trust", 7}, // sameuser
		{"other", "dave", "127.0.0.1", true, "scram-sha-256", 10},
		{"app", "carol", "192.168.1.200", true, "md5", 8},
		{"app", "carol", "192.168.2.1", true, "scram-sha-256", 10},
		{"app", "erin", "::1", true, "scram-sha-256", 9},
		{"app", "alice", "::ffff:10.0.0.1", true, "cert", 5}, // IPv4 in IPv6
	} {
		m, line := rs.Method(c.db, c.user, netip.MustParseAddr(c.addr), c.tls, false)
		if m != c.want || line != c.line {
			t.Errorf("%+v: %s (line %d), want %s (line %d)", c, m, line, c.want, c.line)
		}
	}
	for user, want := range map[string]string{"postgres": "trust", "alice": "md5"} {
		if m, _ := rs.Method("app", user, netip.Addr{}, false, true); m != want {
			t.Errorf("%s on the Unix socket: %s, want %s", user, m, want)
		}
	}
	none, _ := Parse(strings.NewReader("hostssl all all all trust\n"))
	if m, _ := none.Method("app", "x", netip.MustParseAddr("127.0.0.1"), false, false); m != "reject" {
		t.Errorf("no line matches: %s, want reject", m)
	}
}

func TestParseErrors(t *testing.T) {
	for _, line := range []string{
		"host all +admins 0.0.0.0/0 md5",
		"host @dbs all 0.0.0.0/0 md5",
		"host all all db.example.com md5",
		"host all all 10.0.0.0/8 ldap",
		"hostgssenc all all all trust",
		"host all all",
		"host all all 10.0.0.1 md5",
	} {
		if _, err := Parse(strings.NewReader(line)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("%q: %v, want an error naming line 1", line, err)
		}
	}
}

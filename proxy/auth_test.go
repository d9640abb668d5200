package proxy

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmux/pgmux/auth"
	"github.com/pgmux/pgmux/internal/pgtest"
)

// authUsers is an auth file as pgmux reads it: plain passwords for the users
// that also log in to the server, hashed secrets for users mapped to a fixed
// backend user.
func authUsers(t *testing.T) map[string]auth.Secret {
	t.Helper()
	scram, err := auth.NewScramSecret("hashed-scram-pw", nil, 4096)
	if err != nil {
		t.Fatal(err)
	}
	userlist := fmt.Sprintf(`"%s" "%s"
"%s" "%s"
"hashed_scram" "%s"
"hashed_md5" "%s"
`, pgtest.ScramUser, pgtest.ScramPassword, pgtest.MD5User, pgtest.MD5Password,
		scram.String(), auth.MD5Secret("hashed_md5", "hashed-md5-pw"))
	users, err := auth.ParseUserlist(strings.NewReader(userlist))
	if err != nil {
		t.Fatal(err)
	}
	return users
}

// TestAuth logs in with SCRAM-SHA-256 and md5, with the right password and
// a wrong one, and checks 28P01 and 3D000.
func TestAuth(t *testing.T) {
	c := needPG(t)
	for _, authType := range []string{"scram-sha-256", "md5"} {
		t.Run(authType, func(t *testing.T) {
			p := startProxy(t, func(o *Options, db *Database) {
				o.AuthType = authType
				o.Users = authUsers(t)
				base := *db
				o.Databases = func(name string) (Database, bool) {
					if name == "nosuchdb" {
						return Database{}, false
					}
					d := base
					d.DBName = name
					if name == "fixed" { // hashed users log in to the server as the superuser
						d.DBName, d.User = "postgres", c.SuperUserName()
					}
					return d, true
				}
			})
			cases := []struct {
				user, password, db string
				wantCode           string // "" for success
			}{
				{pgtest.ScramUser, pgtest.ScramPassword, "postgres", ""},
				{pgtest.MD5User, pgtest.MD5Password, "postgres", ""},
				{"hashed_scram", "hashed-scram-pw", "fixed", ""},
				{pgtest.ScramUser, "wrong", "postgres", "28P01"},
				{pgtest.MD5User, "wrong", "postgres", "28P01"},
				{"hashed_scram", "wrong", "fixed", "28P01"},
				{"nobody", "x", "postgres", "28P01"},
				{pgtest.ScramUser, pgtest.ScramPassword, "nosuchdb", "3D000"},
			}
			if authType == "md5" {
				cases = append(cases,
					struct{ user, password, db, wantCode string }{"hashed_md5", "hashed-md5-pw", "fixed", ""},
					struct{ user, password, db, wantCode string }{"hashed_md5", "wrong", "fixed", "28P01"})
			}
			for _, tc := range cases {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				cfg, err := pgx.ParseConfig(p.dsn(tc.user, tc.password, tc.db))
				if err != nil {
					t.Fatal(err)
				}
				cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
				conn, err := pgx.ConnectConfig(ctx, cfg)
				if tc.wantCode == "" {
					if err != nil {
						t.Errorf("%s/%s: %v", tc.user, tc.db, err)
					} else {
						var who string
						if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil {
							t.Errorf("%s: query: %v", tc.user, err)
						}
						conn.Close(ctx)
					}
				} else if got := sqlstate(err); got != tc.wantCode {
					t.Errorf("%s/%s with password %q: want %s, got %s", tc.user, tc.db, tc.password, tc.wantCode, got)
				}
				cancel()
			}
		})
	}
}

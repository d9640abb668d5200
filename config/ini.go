package config

import (
	"bytes"
	"reflect"
	"slices"
	"time"
	"unicode/utf8"

	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// PgBouncer's configuration file, read as it is: pgbouncer.ini's sections
// [databases], [users], [pgbouncer] and [peers], its %include lines, and
// its keys mapped onto pgmux's. A key pgmux does not honour is a warning
// naming it, never a refusal, unless honouring it differently would change
// who may log in (auth_type plain or pam).

// iniKey is one key of an ini file.
type iniKey struct {
	section, key, value string
	at                  string // file:line, for messages
}

// IsINI reports whether path is a PgBouncer ini file rather than pgmux's
// YAML: by its extension, else by its first line that is not blank or a
// comment being a [section].
func IsINI(path string) bool {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".ini":
		return true
	case ".yaml", ".yml", ".json", ".toml":
		return false
	}
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == ';' || line[0] == '#' {
			continue
		}
		return strings.HasPrefix(line, "[")
	}
	return false
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// maxIncludeDepth bounds %include nesting, as PgBouncer does (a file
// including itself).
const maxIncludeDepth = 10

// readINI reads an ini file and those it includes, in order. As in
// PgBouncer, ; and # begin a comment only at the start of a line, and an
// %include's relative path is taken from the working directory (else from
// the including file's).
func readINI(path string, depth int, section string) ([]iniKey, string, error) {
	if depth > maxIncludeDepth {
		return nil, section, fmt.Errorf("%s: %%include nested more than %d deep", path, maxIncludeDepth)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, section, err
	}
	var out []iniKey
	for i, line := range strings.Split(string(data), "\n") {
		at := fmt.Sprintf("%s:%d", path, i+1)
		if !utf8.ValidString(line) {
			return nil, section, fmt.Errorf("%s: not UTF-8", at)
		}
		line = strings.TrimSpace(line)
		switch {
		case line == "" || line[0] == ';' || line[0] == '#':
			continue
		case strings.HasPrefix(line, "%include"):
			inc := strings.TrimSpace(strings.TrimPrefix(line, "%include"))
			if inc == "" {
				return nil, section, fmt.Errorf("%s: %%include without a file", at)
			}
			if _, err := os.Stat(inc); err != nil && !filepath.IsAbs(inc) {
				if beside := filepath.Join(filepath.Dir(path), inc); fileExists(beside) {
					inc = beside // not in the working directory, PgBouncer's rule: beside the file
				}
			}
			keys, sec, err := readINI(inc, depth+1, section)
			if err != nil {
				return nil, section, fmt.Errorf("%s: %w", at, err)
			}
			out, section = append(out, keys...), sec
			continue
		case line[0] == '[':
			end := strings.IndexByte(line, ']')
			if end < 0 {
				return nil, section, fmt.Errorf("%s: %q is not a [section]", at, line)
			}
			section = strings.ToLower(strings.TrimSpace(line[1:end]))
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, section, fmt.Errorf("%s: %q is not key = value", at, line)
		}
		if section == "" {
			return nil, section, fmt.Errorf("%s: %q before any [section]", at, line)
		}
		out = append(out, iniKey{section: section, key: strings.TrimSpace(k), value: strings.TrimSpace(v), at: at})
	}
	return out, section, nil
}

// A Note is what pgmux says about one key of a PgBouncer file: how it was
// mapped, when not one to one, or why it is not honoured.
type Note struct {
	At, Key, Text string
}

func (n Note) String() string { return fmt.Sprintf("%s: %s: %s", n.At, n.Key, n.Text) }

// fromINI maps the keys of a PgBouncer file onto pgmux's, as the map
// viper reads a YAML file into, with a note for each key not mapped one
// to one.
func fromINI(keys []iniKey) (map[string]any, []Note, error) {
	m := map[string]any{}
	var notes []Note
	note := func(k iniKey, format string, args ...any) {
		notes = append(notes, Note{At: k.at, Key: k.key, Text: fmt.Sprintf(format, args...)})
	}
	listenAddr, listenPort := "", "6432"
	var listenKey, portKey *iniKey
	dbs, users, peers := map[string]any{}, map[string]any{}, map[string]any{}
	for i := range keys {
		k := keys[i]
		switch k.section {
		case "databases":
			name, err := iniName(k.key)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", k.at, err)
			}
			d, dn, err := iniDatabase(k)
			if err != nil {
				return nil, nil, err
			}
			dbs[name] = d
			notes = append(notes, dn...)
		case "users":
			u, un, err := iniUser(k)
			if err != nil {
				return nil, nil, err
			}
			users[k.key] = u
			notes = append(notes, un...)
		case "peers":
			p, pn, err := iniEntry(k, "peer", []string{"host"}, []string{"port"})
			if err != nil {
				return nil, nil, err
			}
			peers[k.key] = p
			notes = append(notes, pn...)
		case "pgbouncer":
			key := strings.ToLower(k.key)
			switch {
			case key == "listen_addr":
				listenAddr, listenKey = k.value, &keys[i]
			case key == "listen_port":
				listenPort, portKey = k.value, &keys[i]
			case key == "pool_mode" && strings.EqualFold(k.value, "statement"):
				m[key] = "transaction"
				note(k, "statement taken as transaction: pgmux does not refuse multi-statement transactions")
			case same[key]:
				m[key] = k.value
			case key == "admin_users" || key == "stats_users" || key == "ignore_startup_parameters" || key == "track_extra_parameters":
				m[key] = iniList(k.value)
			case key == "auth_type":
				switch strings.ToLower(k.value) {
				case "any":
					m[key] = "trust"
					note(k, "any taken as trust: pgmux does not ignore the user name a client gives")
				case "plain", "pam":
					return nil, nil, fmt.Errorf("%s: auth_type %s: pgmux does not take it; use scram-sha-256, md5, cert, hba or trust", k.at, k.value)
				default:
					m[key] = strings.ToLower(k.value)
				}
			case key == "verbose":
				if n, _ := strconv.Atoi(k.value); n > 0 {
					m["log_level"] = "debug"
					note(k, "taken as log_level: debug")
				}
			case key == "load_balance_hosts": // each database of several hosts takes it, below
			case ignored[key] != "":
				note(k, "not honoured: %s", ignored[key])
			default:
				note(k, "not a key pgmux knows: ignored")
			}
		default:
			note(k, "in section [%s], which pgmux does not know: ignored", k.section)
		}
	}
	// A database of several hosts spreads over them as [pgbouncer]'s
	// load_balance_hosts says, round-robin by default, as PgBouncer.
	balance := "round-robin"
	for _, k := range keys {
		if k.section == "pgbouncer" && strings.EqualFold(k.key, "load_balance_hosts") {
			balance = k.value
		}
	}
	for _, d := range dbs {
		if d, ok := d.(map[string]any); ok && d["load_balance_hosts"] == "" {
			d["load_balance_hosts"] = balance
		}
	}
	if len(dbs) > 0 {
		m["databases"] = dbs
	}
	if len(users) > 0 {
		m["users"] = users
	}
	if len(peers) > 0 {
		m["peers"] = peers
	}
	// listen_addr and listen_port make pgmux's listen.
	addrs := iniList(listenAddr)
	switch {
	case len(addrs) == 0:
		if listenKey != nil {
			notes = append(notes, Note{At: listenKey.at, Key: "listen_addr", Text: "empty (Unix socket only): pgmux listens on TCP too, on 127.0.0.1"})
		}
		m["listen"] = "127.0.0.1:" + listenPort
	default:
		var hostPorts []string
		for _, a := range addrs {
			if a == "*" {
				a = ""
			}
			hostPorts = append(hostPorts, joinHostPort(a, listenPort))
		}
		m["listen"] = strings.Join(hostPorts, ",")
		if listenKey != nil || portKey != nil {
			at := ""
			if listenKey != nil {
				at = listenKey.at
			} else {
				at = portKey.at
			}
			notes = append(notes, Note{At: at, Key: "listen_addr, listen_port", Text: "taken as listen: " + m["listen"].(string)})
		}
	}
	return m, notes, nil
}

// joinHostPort is net.JoinHostPort, with "*" (every address) as an empty
// host.
func joinHostPort(host, port string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + port
	}
	return host + ":" + port
}

// same are the [pgbouncer] keys pgmux takes with the same name and meaning.
var same = func() map[string]bool {
	m := map[string]bool{}
	for _, k := range strings.Fields(`unix_socket_dir unix_socket_mode pool_mode default_pool_size min_pool_size
		max_client_conn auth_file auth_hba_file auth_user auth_query auth_dbname query_wait_timeout
		server_connect_timeout server_idle_timeout server_lifetime client_idle_timeout client_login_timeout
		idle_transaction_timeout server_reset_query max_packet_size max_prepared_statements stats_period
		reserve_pool_size reserve_pool_timeout max_db_connections max_user_connections
		pidfile log_connections log_disconnections application_name_add_host
		tcp_keepalive tcp_keepcnt tcp_keepidle tcp_keepintvl server_login_retry
		server_check_query server_check_delay query_timeout peer_id
		client_tls_sslmode client_tls_cert_file client_tls_key_file client_tls_ca_file client_tls_protocols client_tls_ciphers
		server_tls_sslmode server_tls_cert_file server_tls_key_file server_tls_ca_file server_tls_protocols server_tls_ciphers`) {
		m[k] = true
	}
	return m
}()

// ignored are the [pgbouncer] keys pgmux knows and does not honour, with
// why.
var ignored = map[string]string{
	"logfile":                   "pgmux logs to standard error",
	"syslog":                    "pgmux logs to standard error",
	"syslog_facility":           "pgmux logs to standard error",
	"syslog_ident":              "pgmux logs to standard error",
	"log_pooler_errors":         "pgmux logs the errors it sends at log_level info",
	"log_stats":                 "pgmux's statistics are in the admin API and /metrics",
	"user":                      "pgmux does not change user: run it as the user it should be",
	"unix_socket_group":         "the socket's group is the process's",
	"server_reset_query_always": "pgmux runs server_reset_query in session mode only",
	"server_fast_close":         "not in pgmux",
	"server_round_robin":        "pgmux lends the most recently used idle server",
	"autodb_idle_timeout":       "pgmux keeps a pool made for the * entry",
	"suspend_timeout":           "pgmux has no SUSPEND or online restart (-R); it drains",
	"dns_max_ttl":               "Go's resolver, at each connect",
	"dns_nxdomain_ttl":          "Go's resolver, at each connect",
	"dns_zone_check_period":     "Go's resolver, at each connect",
	"resolv_conf":               "Go's resolver reads /etc/resolv.conf",
	"pkt_buf":                   "PgBouncer's internal buffer",
	"sbuf_loopcnt":              "PgBouncer's internal loop",
	"listen_backlog":            "the kernel's default backlog",
	"so_reuseport":              "pgmux always listens with SO_REUSEPORT",
	"tcp_defer_accept":          "not in pgmux",
	"tcp_socket_buffer":         "the kernel's buffer sizes",
	"tcp_user_timeout":          "not in pgmux",
	"disable_pqexec":            "pgmux passes multi-statement queries",
	"conffile":                  "pgmux reloads the file it was started with",
	"service_name":              "Windows service name",
	"job_name":                  "Windows service name",
	"client_tls_dheparams":      "Go's TLS chooses its key exchange",
	"client_tls_ecdhcurve":      "Go's TLS chooses its key exchange",
	"max_client_conn_per_user":  "not in pgmux",
	"query_wait_notify":         "not in pgmux",
	"cancel_wait_timeout":       "not in pgmux",
}

// iniList splits a comma-separated list, trimmed.
func iniList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// iniName reads a database name: plain, or quoted as an SQL identifier.
func iniName(s string) (string, error) {
	if !strings.HasPrefix(s, `"`) {
		return s, nil
	}
	if len(s) < 2 || !strings.HasSuffix(s, `"`) {
		return "", fmt.Errorf("database name %s: an unclosed quote", s)
	}
	return strings.ReplaceAll(s[1:len(s)-1], `""`, `"`), nil
}

// iniDatabase reads a [databases] entry's connection string.
func iniDatabase(k iniKey) (map[string]any, []Note, error) {
	d, notes, err := iniEntry(k, "database", []string{"host", "dbname", "user", "password", "load_balance_hosts"},
		[]string{"port", "pool_size", "reserve_pool_size", "max_db_connections"})
	if err != nil {
		return nil, nil, err
	}
	if h, ok := d["host"].(string); ok && len(iniList(h)) > 1 && d["load_balance_hosts"] == nil {
		d["load_balance_hosts"] = "" // the [pgbouncer] section's, or PgBouncer's default (fromINI)
	}
	return d, notes, nil
}

// iniUser reads a [users] entry: the user's pool_mode, pool_size,
// reserve_pool_size and max_user_connections.
func iniUser(k iniKey) (map[string]any, []Note, error) {
	return iniEntry(k, "user", nil, []string{"pool_size", "reserve_pool_size", "max_user_connections"})
}

// iniEntry reads an entry's key=value list into the keys pgmux has for a
// database or a user (what): text ones, numeric ones, and pool_mode; a
// note for each other.
func iniEntry(k iniKey, what string, text, numeric []string) (map[string]any, []Note, error) {
	params, err := connString(k.value)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %s: %w", k.at, k.key, err)
	}
	out := map[string]any{}
	var notes []Note
	names := make([]string, 0, len(params))
	for p := range params {
		names = append(names, p)
	}
	sort.Strings(names)
	for _, p := range names {
		v := params[p]
		if p == "reserve_pool" {
			p = "reserve_pool_size" // PgBouncer's older name
		}
		switch {
		case p == "pool_mode":
			if strings.EqualFold(v, "statement") {
				v = "transaction"
				notes = append(notes, Note{At: k.at, Key: k.key + " pool_mode", Text: "statement taken as transaction"})
			}
			out[p] = v
		case slices.Contains(numeric, p):
			n, err := strconv.Atoi(v)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %s: %s=%q is not a number", k.at, k.key, p, v)
			}
			out[p] = n
		case slices.Contains(text, p):
			out[p] = v
		default:
			notes = append(notes, Note{At: k.at, Key: k.key + " " + p, Text: "not honoured for a " + what})
		}
	}
	return out, notes, nil
}

// connString reads a libpq-style key=value list: values may be quoted
// with single quotes, with \' and \\ inside.
func connString(s string) (map[string]string, error) {
	out := map[string]string{}
	for i := 0; ; {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		if i == len(s) {
			return out, nil
		}
		eq := strings.IndexByte(s[i:], '=')
		if eq < 0 {
			return nil, fmt.Errorf("%q is not key=value", s[i:])
		}
		key := strings.TrimSpace(s[i : i+eq])
		i += eq + 1
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		var v strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			for ; i < len(s) && s[i] != '\''; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				v.WriteByte(s[i])
			}
			if i == len(s) {
				return nil, fmt.Errorf("%s: an unclosed quote", key)
			}
			i++
		} else {
			for ; i < len(s) && s[i] != ' ' && s[i] != '\t'; i++ {
				v.WriteByte(s[i])
			}
		}
		if key == "" {
			return nil, fmt.Errorf("a value without a key")
		}
		out[strings.ToLower(key)] = v.String()
	}
}

// LoadINI reads a PgBouncer ini file into pgmux's keys, as viper reads a
// YAML file, and says what it maps other than one to one (never nil). Keys
// the file leaves out take PgBouncer's defaults where pgmux's differ.
func LoadINI(path string) (map[string]any, []Note, error) {
	keys, _, err := readINI(path, 0, "")
	if err != nil {
		return nil, nil, err
	}
	m, notes, err := fromINI(keys)
	if err != nil {
		return nil, nil, err
	}
	for _, d := range pgbouncerDefaults {
		if _, ok := m[d.key]; !ok {
			m[d.key] = d.value
			notes = append(notes, Note{At: path, Key: d.key, Text: fmt.Sprintf("not set: PgBouncer's default, %v", d.value)})
		}
	}
	// An entry with no host reaches the server through the Unix socket
	// directory, as PgBouncer's does.
	if dbs, ok := m["databases"].(map[string]any); ok {
		names := make([]string, 0, len(dbs))
		for n := range dbs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			d := dbs[n].(map[string]any)
			if _, ok := d["host"]; ok {
				continue
			}
			if dir, _ := m["unix_socket_dir"].(string); dir != "" {
				d["host"] = dir
				notes = append(notes, Note{At: path, Key: n, Text: "no host: through the Unix socket directory " + dir + ", as PgBouncer"})
			} else {
				notes = append(notes, Note{At: path, Key: n, Text: "no host and no unix_socket_dir: TCP to 127.0.0.1"})
			}
		}
	}
	if notes == nil {
		notes = []Note{}
	}
	return m, notes, nil
}

// pgbouncerDefaults are PgBouncer's defaults for keys whose pgmux default
// differs, in the order Convert writes them.
var pgbouncerDefaults = []struct {
	key   string
	value any
}{
	{"pool_mode", "session"},
	{"max_client_conn", 100},
	{"auth_type", "md5"},
	{"unix_socket_dir", "/tmp"},
}

// Convert reads a PgBouncer ini file and returns the equivalent YAML for
// pgmux, with a comment for each key mapped other than one to one or not
// honoured.
func Convert(path string) ([]byte, error) {
	m, notes, err := LoadINI(path)
	if err != nil {
		return nil, err
	}
	doc := &yaml.Node{Kind: yaml.MappingNode}
	var head strings.Builder
	fmt.Fprintf(&head, "pgmux configuration converted from %s by pgmux convert.", filepath.Base(path))
	if len(notes) > 0 {
		head.WriteString("\nWhat it maps differently or does not honour:")
		for _, n := range notes {
			fmt.Fprintf(&head, "\n  %s: %s", n.Key, n.Text)
		}
	}
	doc.HeadComment = head.String()
	rt := reflect.TypeOf(Config{})
	for i := range rt.NumField() {
		key := rt.Field(i).Tag.Get("mapstructure")
		v, ok := m[key]
		if !ok {
			continue
		}
		var val yaml.Node
		if key == "databases" {
			val = databasesNode(v.(map[string]any))
		} else if err := val.Encode(typed(rt.Field(i).Type, v)); err != nil {
			return nil, err
		}
		doc.Content = append(doc.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: key}, &val)
	}
	if _, ok := m["databases"]; !ok {
		doc.Content = append(doc.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: "databases",
			LineComment: "none in the file: every client gets 3D000 until one is added"},
			&yaml.Node{Kind: yaml.MappingNode, Style: yaml.FlowStyle})
	}
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	enc.Close()
	return out.Bytes(), nil
}

// typed is an ini value as the YAML for a key of type t writes it: a
// number for a count or a duration (PgBouncer's are seconds).
func typed(t reflect.Type, v any) any {
	s, ok := v.(string)
	if !ok {
		return v
	}
	switch t {
	case reflect.TypeOf(0):
		if n, err := strconv.Atoi(s); err == nil {
			return n
		}
	case reflect.TypeOf(time.Duration(0)):
		if f, err := strconv.ParseFloat(s, 64); err == nil {
			return f
		}
	}
	return v
}

// databasesNode is the databases section, each entry's keys in Database's
// order.
func databasesNode(dbs map[string]any) yaml.Node {
	out := yaml.Node{Kind: yaml.MappingNode}
	names := make([]string, 0, len(dbs))
	for n := range dbs {
		names = append(names, n)
	}
	sort.Strings(names)
	dt := reflect.TypeOf(Database{})
	for _, n := range names {
		d := dbs[n].(map[string]any)
		entry := &yaml.Node{Kind: yaml.MappingNode, Style: yaml.FlowStyle}
		for j := range dt.NumField() {
			k := dt.Field(j).Tag.Get("mapstructure")
			if v, ok := d[k]; ok {
				var val yaml.Node
				val.Encode(v)
				entry.Content = append(entry.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: k}, &val)
			}
		}
		out.Content = append(out.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: n}, entry)
	}
	return out
}

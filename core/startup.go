package core

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/protocol"
)

// Login is what a client's StartupMessage asks for.
type Login struct {
	User     string
	Database string // the user's name when the client names none
	// Settings are the run-time settings among the startup parameters, by
	// lower-cased name, those given as -c name=value in options included.
	Settings map[string]string
	// Negotiate is a NegotiateProtocolVersion to send the client before
	// anything else, or nil: as PostgreSQL does, a client asking for a
	// newer minor version or for protocol options it does not know is
	// offered 3.0 and told which options those are.
	Negotiate []byte
}

// Encrypt is pgmux's answer to a client's request for encryption, made
// before its StartupMessage.
type Encrypt int8

const (
	EncryptNo  Encrypt = iota // 'N': the client goes on as it is
	EncryptTLS                // 'S', and the TLS handshake
)

// AnswerEncryption says how to answer a client's tries-th (from 0) request
// for encryption, an SSLRequest (ssl) or a GSSENCRequest: tlsOn says
// client TLS is set up, inTLS that the connection speaks TLS already, and
// pending that bytes followed the request unread. pgmux has no GSSAPI.
func AnswerEncryption(ssl bool, tries int, tlsOn, inTLS, pending bool) (Encrypt, error) {
	switch {
	case tries > 2:
		return EncryptNo, protocol.Fatal(protocol.CodeProtocolViolation, "too many encryption requests")
	case !ssl || !tlsOn || inTLS:
		return EncryptNo, nil
	case pending:
		// Bytes sent in the clear, to be read as if encrypted.
		return EncryptNo, protocol.Fatal(protocol.CodeProtocolViolation, "received unencrypted data after SSL request")
	}
	return EncryptTLS, nil
}

// ParseStartup reads a StartupMessage. On error, the Login still carries
// Negotiate when the client is owed one before the error.
func ParseStartup(st *protocol.Startup) (Login, error) {
	var l Login
	if st.MajorVersion != 3 {
		return l, protocol.Fatal(protocol.CodeFeatureNotSupported, fmt.Sprintf(
			"unsupported frontend protocol %d.%d: server supports 3.0 to 3.0", st.MajorVersion, st.MinorVersion))
	}
	var unknown []string
	for _, p := range st.Params {
		if strings.HasPrefix(p.Key, "_pq_.") {
			unknown = append(unknown, p.Key)
		}
	}
	if st.MinorVersion > 0 || len(unknown) > 0 {
		l.Negotiate, _ = (&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unknown}).Encode(nil)
	}
	l.User, _ = st.Get("user")
	if l.User == "" {
		return l, protocol.Fatal(protocol.CodeInvalidAuthorization, "no PostgreSQL user name specified in startup packet")
	}
	var ok bool
	if l.Database, ok = st.Get("database"); !ok || l.Database == "" {
		l.Database = l.User
	}
	if v, ok := st.Get("replication"); ok && v != "false" && v != "off" && v != "0" && v != "no" {
		return l, protocol.Fatal(protocol.CodeFeatureNotSupported, "replication connections are not supported by pgmux")
	}
	var err error
	l.Settings, err = startupSettings(st.Params)
	return l, err
}

// Gate is what may turn a client away once its StartupMessage is read,
// before it authenticates.
type Gate struct {
	// TLSRequired is client_tls_sslmode's name when it requires TLS,
	// else "". Secure: the client speaks TLS, or came over a Unix socket
	// (TLS is for TCP, as in PostgreSQL).
	TLSRequired string
	Secure      bool
	OverLimit   bool // max_client_conn clients are logged in already
	// Known: the database is configured (or is the admin console's);
	// Disabled: DISABLE stopped its new connections.
	Known, Disabled bool
}

// Check says what a client whose StartupMessage gave l is sent first
// (l.Negotiate, when owed and the client is not refused TLS first) and why
// it is turned away, nil if it may authenticate; parsed is what
// ParseStartup returned with l.
func (a Gate) Check(l Login, parsed error) (out []byte, refusal error) {
	if a.TLSRequired != "" && !a.Secure {
		return nil, protocol.Fatal(protocol.CodeInvalidAuthorization,
			"TLS required (client_tls_sslmode is "+a.TLSRequired+"): connect with sslmode=require or stronger")
	}
	switch {
	case a.OverLimit:
		refusal = protocol.Fatal(protocol.CodeTooManyConnections, "no more connections allowed (max_client_conn)")
	case parsed != nil:
		refusal = parsed
	case !a.Known:
		refusal = protocol.Fatal(protocol.CodeInvalidCatalogName, fmt.Sprintf("database %q does not exist", l.Database))
	case a.Disabled:
		refusal = protocol.Fatal(protocol.CodeObjectNotInPrerequisiteState, fmt.Sprintf("database %q does not allow connections (DISABLE)", l.Database))
	}
	return l.Negotiate, refusal
}

// Adjust applies to l's settings ignore_startup_parameters (the names
// listed are taken and not applied to servers) and, with host (the
// client's address; "" when off), application_name_add_host.
func (l *Login) Adjust(ignore []string, host string) {
	for _, name := range ignore {
		for k := range l.Settings {
			if strings.EqualFold(k, name) {
				delete(l.Settings, k)
			}
		}
	}
	if host != "" {
		if l.Settings == nil {
			l.Settings = map[string]string{}
		}
		l.Settings["application_name"] += " - " + host
	}
}

// Welcome appends to buf what a client that has logged in is sent: the
// server's parameters as its own settings make them, its key for cancels,
// and ReadyForQuery.
func Welcome(buf []byte, params []Param, want *Wanted, pid, secret uint32) []byte {
	for _, p := range params {
		v := p.Value
		if w, ok := want.Get(p.Key); ok {
			v = w
		}
		buf, _ = (&pgproto3.ParameterStatus{Name: p.Name, Value: v}).Encode(buf)
	}
	buf, _ = (&pgproto3.BackendKeyData{ProcessID: pid, SecretKey: binary.BigEndian.AppendUint32(nil, secret)}).Encode(buf)
	return append(buf, 'Z', 0, 0, 0, 5, 'I')
}

// startupSettings returns the run-time settings among the startup
// parameters, by lower-cased name, including those given as -c name=value in
// options.
func startupSettings(params []protocol.Param) (map[string]string, error) {
	want := make(map[string]string)
	for _, p := range params {
		switch {
		case p.Key == "user" || p.Key == "database" || p.Key == "replication" || strings.HasPrefix(p.Key, "_pq_."):
		case p.Key == "options":
			opts, err := parseOptions(p.Value)
			if err != nil {
				return nil, err
			}
			for k, v := range opts {
				want[strings.ToLower(k)] = v
			}
		default:
			want[strings.ToLower(p.Key)] = p.Value
		}
	}
	return want, nil
}

// parseOptions reads the options startup parameter: "-c name=value" and
// "--name=value" settings separated by spaces, with backslash escapes, as
// PostgreSQL's pg_split_opts does. Other switches are refused.
func parseOptions(s string) (map[string]string, error) {
	var words []string
	var cur strings.Builder
	escaped, inWord := false, false
	for _, r := range s {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\':
			escaped, inWord = true, true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	out := make(map[string]string)
	for i := 0; i < len(words); i++ {
		w := words[i]
		var setting string
		switch {
		case w == "-c" && i+1 < len(words):
			i++
			setting = words[i]
		case strings.HasPrefix(w, "-c"):
			setting = w[2:]
		case strings.HasPrefix(w, "--"):
			setting = w[2:]
		default:
			return nil, protocol.Fatal(protocol.CodeFeatureNotSupported, fmt.Sprintf("unsupported startup option %q: pgmux takes only -c name=value", w))
		}
		k, v, ok := strings.Cut(setting, "=")
		if !ok || k == "" {
			return nil, protocol.Fatal(protocol.CodeProtocolViolation, fmt.Sprintf("invalid startup option %q", w))
		}
		out[strings.ReplaceAll(k, "-", "_")] = v
	}
	return out, nil
}

package protocol

import (
	"github.com/jackc/pgx/v5/pgproto3"
)

// SQLSTATE codes pgmux sends itself.
const (
	CodeProtocolViolation            = "08P01"
	CodeConnectionFailure            = "08006"
	CodeInvalidPassword              = "28P01"
	CodeInvalidAuthorization         = "28000"
	CodeInvalidCatalogName           = "3D000"
	CodeTooManyConnections           = "53300"
	CodeQueryCanceled                = "57014"
	CodeAdminShutdown                = "57P01"
	CodeIdleSessionTimeout           = "57P05"
	CodeIdleInTransactionTimout      = "25P03"
	CodeFeatureNotSupported          = "0A000"
	CodeCannotConnectNow             = "57P03"
	CodeInternalError                = "XX000"
	CodeProgramLimitExceeded         = "54000"
	CodeObjectNotInPrerequisiteState = "55000"
)

// PgError is an error that is meant to reach the client as an ErrorResponse.
// It travels up unchanged through wrapping, so the code that finally writes to
// the client can find it with errors.As.
type PgError struct {
	Severity string // ERROR or FATAL
	Code     string
	Message  string
	Detail   string
	Hint     string
}

// Fatal returns a FATAL PgError: the connection is closed after it is sent.
func Fatal(code, msg string) *PgError {
	return &PgError{Severity: "FATAL", Code: code, Message: msg}
}

// Error returns an ERROR-level PgError.
func Error(code, msg string) *PgError {
	return &PgError{Severity: "ERROR", Code: code, Message: msg}
}

func (e *PgError) Error() string { return e.Severity + ": " + e.Message + " (SQLSTATE " + e.Code + ")" }

// AppendTo appends e encoded as an ErrorResponse message.
func (e *PgError) AppendTo(dst []byte) []byte {
	msg := pgproto3.ErrorResponse{
		Severity:            e.Severity,
		SeverityUnlocalized: e.Severity,
		Code:                e.Code,
		Message:             e.Message,
		Detail:              e.Detail,
		Hint:                e.Hint,
	}
	out, err := msg.Encode(dst)
	if err != nil {
		panic("BUG: encode ErrorResponse: " + err.Error())
	}
	return out
}

// DecodeError decodes an ErrorResponse body; a malformed one becomes an
// internal error, so that whoever reads it always has a code to act on.
func DecodeError(body []byte) *PgError {
	var er pgproto3.ErrorResponse
	if er.Decode(body) != nil {
		return Error(CodeInternalError, "malformed error from server")
	}
	return &PgError{Severity: er.Severity, Code: er.Code, Message: er.Message, Detail: er.Detail, Hint: er.Hint}
}

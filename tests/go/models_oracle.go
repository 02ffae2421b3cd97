// models_oracle reads cases from stdin (one JSON object per line: body and content_type
// base64/plain, query) and prints, per case, what Go's standard library makes of them:
// json.NewDecoder(...).Decode into a struct with string fields model, name, source, destination, kind (what gin's
// ShouldBindJSON does), json.Unmarshal into map[string]json.RawMessage plus the "model"
// member (Ollama's extractModelField), strings.TrimSpace, and net/http's FormValue("model")
// after ParseMultipartForm (Ollama's TranscriptionMiddleware). Used by tests/test_models_go.py.
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"strings"
)

type in struct {
	Body        string `json:"body"`
	ContentType string `json:"content_type"`
	Query       string `json:"query"`
	Trim        string `json:"trim"`
}

type req struct {
	Model       string `json:"model"`
	Name        string `json:"name"`
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Kind        string `json:"kind"`
}

type out struct {
	DecodeErr bool   `json:"decode_err"`
	Fields    req    `json:"fields"`
	MapOK     bool   `json:"map_ok"`
	MapModel  string `json:"map_model"`
	Trimmed   string `json:"trimmed"`
	FormErr   bool   `json:"form_err"`
	FormModel string `json:"form_model"`
}

func main() {
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	enc := json.NewEncoder(os.Stdout)
	for sc.Scan() {
		var c in
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			panic(err)
		}
		body, _ := base64.StdEncoding.DecodeString(c.Body)
		var o out
		var r req
		if err := json.NewDecoder(bytes.NewReader(body)).Decode(&r); err != nil {
			o.DecodeErr = true
		}
		o.Fields = r
		var m map[string]json.RawMessage
		if json.Unmarshal(body, &m) == nil {
			if raw, ok := m["model"]; ok {
				var s string
				if json.Unmarshal(raw, &s) == nil {
					o.MapOK, o.MapModel = true, s
				}
			}
		}
		o.Trimmed = strings.TrimSpace(c.Trim)
		hr, _ := http.NewRequest("POST", "/v1/audio/transcriptions?"+c.Query, bytes.NewReader(body))
		hr.Header.Set("Content-Type", c.ContentType)
		if err := hr.ParseMultipartForm(25 << 20); err != nil {
			o.FormErr = true
		} else {
			o.FormModel = hr.FormValue("model")
		}
		enc.Encode(o)
	}
}

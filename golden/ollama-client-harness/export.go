// Harness-only: exports the copied, unexported do and stream.
package api

import "context"

func (c *Client) Do(ctx context.Context, method, path string, reqData, respData any) error {
	return c.do(ctx, method, path, reqData, respData)
}

func (c *Client) Stream(ctx context.Context, method, path string, data any, fn func([]byte) error) error {
	return c.stream(ctx, method, path, data, fn)
}

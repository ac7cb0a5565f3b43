// The REST client: same-origin fetch with the agent's session cookie.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || `http_${status}`;
  }
}

let onUnauthorized = () => {};

/** Called when any request (other than the sign-in ones) answers 401. */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

/** fetch() a /v1 route; resolves with the JSON body (null for 204), throws ApiError. */
export async function api(method, path, body, { quiet401 = false } = {}) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, 'network', 'The server cannot be reached. Check your connection.');
  }
  if (response.status === 204) return null;
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    if (response.status === 401 && !quiet401) onUnauthorized();
    throw new ApiError(response.status, error.code, error.message || response.statusText);
  }
  return data;
}

/** A readable sentence for an API error, for toasts. */
export function describeError(err, action) {
  const prefix = action ? `${action} failed: ` : '';
  if (!(err instanceof ApiError)) return prefix + String(err && err.message ? err.message : err);
  const known = {
    already_claimed: 'someone else claimed it first',
    claimed_by_other: 'another agent holds this item',
    item_closed: 'this item is already resolved',
    not_your_claim: 'another agent holds this claim',
    run_cancelled: 'the AI reply this belonged to was cancelled (the thread was taken over)',
    wrong_item_kind: 'this action does not fit the item',
    ai_off: 'the AI is off on this server',
    ai_failed: 'the AI could not write a suggestion, try again',
    suggestion_sent: 'this suggestion was already sent',
    empty_text: 'the text is empty',
    network: 'the server cannot be reached',
  };
  const holder = /claimed by (.+)$/.exec(err.message || '');
  if (holder && (err.code === 'already_claimed' || err.code === 'claimed_by_other' || err.code === 'not_your_claim')) {
    return `${prefix}${holder[1]} ${err.code === 'already_claimed' ? 'claimed this item first' : 'holds this item'}.`;
  }
  const detail = err.message && err.message !== err.code ? err.message : known[err.code] || err.code;
  const hint = known[err.code] && err.message && !err.message.includes(known[err.code]) ? ` (${known[err.code]})` : '';
  return `${prefix}${detail}${err.code === 'network' ? '' : hint}`;
}

// Drives the demo page in headless Chromium for tests/e2e/browser_demo.rs:
//   node run.mjs URL IMAGE BAD_FILE OUT_DIR
// loads the page, types a query (Enter), uploads an image (composed query),
// switches the reranker, follows "More like this" from the keyboard, checks
// an invalid upload's error, and saves screenshots (desktop and phone width)
// in OUT_DIR. Prints one JSON object with what it saw; exits non-zero on any
// failed step. Chromium: $CHROMIUM or /usr/bin/chromium (Debian's package).
import { chromium } from "playwright-core";

const [url, image, badFile, out] = process.argv.slice(2);
if (!out) { console.error("usage: node run.mjs URL IMAGE BAD_FILE OUT_DIR"); process.exit(2); }
const seen = { steps: [], page_errors: [] };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.setDefaultTimeout(30000);
  page.on("pageerror", (e) => seen.page_errors.push(String(e)));
  // The bad upload's 400 is expected; any other failed load or script error is not.
  let expect400 = false;
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    if (expect400 && m.text().includes("status of 400")) { expect400 = false; return; }
    seen.page_errors.push(m.text());
  });
  const searched = () => page.waitForResponse((r) => r.url().endsWith("/api/search"));
  const summary = () => page.locator("#summary p").first().textContent();

  await page.goto(url);
  await page.waitForFunction(() => /\d+ images/.test(document.querySelector("#collection").textContent));
  seen.collection = await page.locator("#collection").textContent();
  seen.rerankers = await page.locator("#rerank option").evaluateAll((os) => os.map((o) => o.value));

  // 1. A text query, submitted with the keyboard.
  await page.locator("#text").fill("a photo of a rocket");
  let resp = searched();
  await page.locator("#text").press("Enter");
  seen.text_status = (await resp).status();
  await page.waitForSelector("#results li.card img");
  seen.text_results = await page.locator("#results li.card").count();
  seen.text_summary = await summary();
  seen.steps.push("text");

  // 2. An uploaded reference image with the same text: a composed query.
  await page.setInputFiles("#image", image);
  await page.waitForSelector("#preview:not([hidden])");
  resp = searched();
  await page.locator("#go").click();
  seen.composed_status = (await resp).status();
  await page.waitForFunction(() => document.querySelector("#summary p")?.textContent.startsWith("composed"));
  seen.composed_summary = await summary();
  seen.steps.push("composed");

  // 3. Switch the reranker: the search reruns and the stage view shows the new stage.
  for (const stage of ["superglobal", "ebr"]) {
    if (!seen.rerankers.includes(stage)) continue;
    resp = searched();
    await page.locator("#rerank").selectOption(stage);
    seen[`${stage}_status`] = (await resp).status();
    await page.waitForSelector(`.stage[data-stage="${stage}"]`);
    seen[`${stage}_stages`] = await page.locator(".stage").evaluateAll((s) => s.map((e) => e.dataset.stage));
    if (stage === "ebr") {
      await page.waitForSelector(".stage[data-stage=ebr] img.ebr-grid");
      seen.ebr_grid = await page.locator("img.ebr-grid").first().evaluate((i) => [i.naturalWidth, i.naturalHeight]);
    }
    seen.steps.push(stage);
  }
  await page.locator("#stages-section").scrollIntoViewIfNeeded();
  await page.screenshot({ path: `${out}/demo.png`, fullPage: true });

  // 4. "More like this" from the keyboard: an image query by id.
  resp = searched();
  await page.locator("#rerank").selectOption("none");
  await resp;
  resp = searched();
  await page.locator("#results li.card button").first().focus();
  await page.keyboard.press("Enter");
  seen.similar_status = (await resp).status();
  await page.waitForFunction(() => document.querySelector("#summary p")?.textContent.startsWith("image"));
  seen.similar_first = await page.locator("#results li.card").first().getAttribute("data-id");
  seen.steps.push("similar");

  // 5. An upload that is not an image: the page shows the server's message.
  await page.setInputFiles("#image", badFile);
  expect400 = true;
  resp = searched();
  await page.locator("#go").click();
  seen.bad_status = (await resp).status();
  await page.waitForSelector("#error:not([hidden])");
  seen.bad_message = await page.locator("#error").textContent();
  seen.steps.push("bad-upload");

  // 6. Phone width: nothing overflows sideways.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.locator("#clear-image").click();
  resp = searched();
  await page.locator("#text").fill("a photo of a cat");
  await page.locator("#text").press("Enter");
  await resp;
  await page.waitForSelector("#results li.card img");
  seen.phone_overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await page.screenshot({ path: `${out}/demo-phone.png`, fullPage: false });
  seen.steps.push("phone");
  console.log(JSON.stringify(seen));
} catch (e) {
  seen.failure = String(e);
  console.log(JSON.stringify(seen));
  process.exitCode = 1;
} finally {
  await browser.close();
}

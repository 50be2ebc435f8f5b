// Upload progress for the import form: htmx reports XMLHttpRequest upload progress as
// htmx:xhr:progress on the form that sent it.
document.addEventListener("htmx:xhr:progress", function (event) {
  var form = event.target.closest ? event.target.closest("#import-form") : null;
  if (!form || !event.detail.lengthComputable) return;
  var box = form.querySelector(".upload-progress");
  var bar = form.querySelector("#upload-progress");
  var label = form.querySelector("#upload-progress-label");
  var percent = Math.round((event.detail.loaded / event.detail.total) * 100);
  box.hidden = false;
  bar.value = percent;
  label.textContent = percent + "%";
});
